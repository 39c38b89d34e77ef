"""/healthz and /readyz: anonymous callers learn ready or not, never why."""

from __future__ import annotations

from gateway import create_app


def test_ready_when_database_and_redis_answer(client):
    """Both answer: 200 ok, and nothing else for an anonymous caller."""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_not_ready_says_only_that_and_logs_why(app, settings, caplog):
    """Redis unreachable: an anonymous caller gets 503 unavailable; the error is in the log only."""
    broken = create_app(
        {"TESTING": True, "SETTINGS": settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})}
    )
    with broken.test_client() as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.get_json() == {"status": "unavailable"}
        assert "redis" in caplog.text.lower() and "127.0.0.1:1" in caplog.text

        keyed = client.get("/readyz", headers={"Authorization": f"Bearer {settings.gateway_api_key}"})
        assert keyed.status_code == 503
        assert keyed.get_json()["checks"]["database"] == "ok"
        assert keyed.get_json()["checks"]["redis"].startswith("error")
