"""The /v1 agents API, its auth and its JSON errors, through Flask's test client."""

from __future__ import annotations

import pytest

from gateway.config import Settings
from gateway.storage.models import Agent
from tests.conftest import GATEWAY_API_KEY

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}


def create(client, **fields):
    """POST an agent; return the response."""
    return client.post("/v1/agents", json=fields, headers=AUTH)


# --- auth ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Basic {GATEWAY_API_KEY}"},
        {"Authorization": "Bearer "},
        {"Authorization": GATEWAY_API_KEY},
    ],
)
def test_v1_routes_need_the_bearer_key(client, headers):
    for method, path in [
        ("get", "/v1/agents"),
        ("post", "/v1/agents"),
        ("get", "/v1/agents/agent_default"),
        ("get", "/v1/chats"),
        ("get", "/v1/phone-numbers"),
        ("get", "/v1/no-such-route"),
    ]:
        response = getattr(client, method)(path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_openapi_document_needs_no_key(client):
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.json["openapi"].startswith("3.1")


def test_unset_api_key_closes_the_api_and_says_how_to_open_it(settings_with):
    from gateway import create_app

    app = create_app({"TESTING": True, "SETTINGS": settings_with(gateway_api_key=None)})
    client = app.test_client()
    for headers in ({}, AUTH, {"Authorization": "Bearer "}):
        response = client.get("/v1/agents", headers=headers)
        assert response.status_code == 401
        assert response.json["error"]["code"] == "api_key_not_configured"
        assert "GATEWAY_API_KEY" in response.json["error"]["message"]
    assert client.get("/v1/openapi.json").status_code == 200


def test_the_key_is_only_needed_under_v1(client):
    assert client.get("/healthz").status_code == 200


# --- errors ----------------------------------------------------------------------------------------


def test_malformed_json_is_400(client):
    for body in ["{", "[1, 2]", '{"f": 1e400}', '"text"', "NaN", '{"temperature": NaN}', b"\xff\xfe"]:
        response = client.post("/v1/agents", data=body, headers=AUTH, content_type="application/json")
        assert response.status_code == 400, body
        assert response.json["error"]["code"] == "invalid_json"


def test_unknown_route_and_wrong_method_are_json(client):
    response = client.get("/v1/nothing-here", headers=AUTH)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    response = client.put("/v1/agents", headers=AUTH)
    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_errors_outside_v1_keep_flasks_defaults(client):
    response = client.get("/not-the-api")
    assert response.status_code == 404
    assert response.mimetype == "text/html"


def test_unhandled_errors_under_v1_are_json_500(app, monkeypatch):
    from gateway.api import agents

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(agents, "default_agent", broken)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: Flask turns the error into a 500
    response = app.test_client().get("/v1/agents", headers=AUTH)
    assert response.status_code == 500
    assert response.json["error"] == {
        "code": "internal_error",
        "message": "Internal error; the server log has the details.",
    }


# --- CRUD --------------------------------------------------------------------------------------------


def test_create_read_list_update_delete(client):
    response = create(
        client,
        name="Support",
        model="gpt-test",
        system_prompt="You help {{name}}.",
        temperature=0.3,
        num_last_messages=10,
        full_session_memory=False,
        summary_memory=True,
        user_analysis_memory=True,
        retry_attempts=2,
        retry_delay=0.5,
        max_concurrent_invocations=3,
        end_chat_after_silence_ms=60_000,
        auto_close_message="Bye",
        help_message="Help text",
        fallback_message="Sorry",
        accepts_images=True,
        analysis_fields=[{"name": "sentiment", "description": "how they feel"}],
    )
    assert response.status_code == 201, response.json
    agent = response.json
    agent_id = agent["agent_id"]
    assert agent_id.startswith("agent_")
    assert agent["temperature"] == 0.3
    assert agent["analysis_fields"] == [
        {"name": "sentiment", "type": "string", "description": "how they feel"}
    ]
    assert agent["is_default"] is False
    assert agent["created_at"].endswith("Z")

    assert client.get(f"/v1/agents/{agent_id}", headers=AUTH).json == agent

    listed = client.get("/v1/agents", headers=AUTH).json["items"]
    assert [a["agent_id"] for a in listed] == ["agent_default", agent_id]
    assert listed[0]["is_default"] is True

    response = client.patch(
        f"/v1/agents/{agent_id}", json={"name": "Sales", "temperature": None}, headers=AUTH
    )
    assert response.status_code == 200
    assert response.json["name"] == "Sales"
    assert response.json["temperature"] is None
    assert response.json["system_prompt"] == "You help {{name}}."

    assert client.delete(f"/v1/agents/{agent_id}", headers=AUTH).status_code == 204
    assert client.get(f"/v1/agents/{agent_id}", headers=AUTH).status_code == 404
    assert client.patch(f"/v1/agents/{agent_id}", json={}, headers=AUTH).status_code == 404
    assert client.delete(f"/v1/agents/{agent_id}", headers=AUTH).status_code == 404
    assert [a["agent_id"] for a in client.get("/v1/agents", headers=AUTH).json["items"]] == ["agent_default"]


def test_defaults_fill_what_is_not_sent(client):
    agent = create(client).json
    assert agent["num_last_messages"] == 20
    assert agent["retry_attempts"] == 3
    assert agent["max_concurrent_invocations"] == 1
    assert agent["model"] is None
    assert agent["analysis_fields"] == []


def test_chosen_agent_id_and_conflicts(client):
    assert create(client, agent_id="agent_support").json["agent_id"] == "agent_support"
    response = create(client, agent_id="agent_support")
    assert response.status_code == 409
    assert response.json["error"]["code"] == "agent_exists"
    assert create(client, agent_id="agent_default").status_code == 409
    # A deleted agent's id stays taken: ended chats still name it.
    client.delete("/v1/agents/agent_support", headers=AUTH)
    assert create(client, agent_id="agent_support").status_code == 409


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("temperature", "hot"),
        ("temperature", True),
        ("num_last_messages", -1),
        ("num_last_messages", 1.5),
        ("retry_attempts", 11),
        ("retry_attempts", -1),
        ("retry_delay", -1),
        ("max_concurrent_invocations", 0),
        ("end_chat_after_silence_ms", 999),
        ("end_chat_after_silence_ms", 2**40),
        ("full_session_memory", "yes"),
        ("accepts_images", 1),
        ("name", 3),
        ("name", "x" * 201),
        ("model", ""),
        ("system_prompt", None),
        ("analysis_fields", {"name": "x"}),
        ("analysis_fields", [{"description": "no name"}]),
        ("analysis_fields", ["sentiment"]),
        ("agent_id", "has space"),
        ("agent_id", "a/b"),
        ("unknown_field", 1),
        ("help_message", "nul\x00byte"),
    ],
)
def test_bad_fields_are_422_naming_the_field(client, field, value):
    response = create(client, **{field: value})
    assert response.status_code == 422, response.json
    error = response.json["error"]
    assert error["code"] == "validation_error"
    assert error["field"].startswith(field)
    assert field in error["message"]


def test_patch_validates_too_and_cannot_change_the_id(client):
    agent_id = create(client).json["agent_id"]
    response = client.patch(f"/v1/agents/{agent_id}", json={"retry_attempts": 99}, headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["field"] == "retry_attempts"
    response = client.patch(f"/v1/agents/{agent_id}", json={"agent_id": "other"}, headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["field"] == "agent_id"


def test_boundaries_are_accepted(client):
    response = create(
        client,
        temperature=0,
        num_last_messages=0,
        retry_attempts=10,
        retry_delay=0,
        max_concurrent_invocations=1,
        end_chat_after_silence_ms=1000,
    )
    assert response.status_code == 201
    assert create(client, temperature=2).status_code == 201


# --- delete rules ------------------------------------------------------------------------------------


def test_default_agent_cannot_be_deleted(client):
    response = client.delete("/v1/agents/agent_default", headers=AUTH)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "agent_is_default"


def test_agent_used_by_a_number_or_an_ongoing_chat_cannot_be_deleted(client):
    agent_id = create(client).json["agent_id"]
    client.post(
        "/v1/phone-numbers",
        json={"phone_number": "+14155550123", "outbound_agent_id": agent_id},
        headers=AUTH,
    )
    response = client.delete(f"/v1/agents/{agent_id}", headers=AUTH)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "agent_in_use"
    assert "+14155550123" in response.json["error"]["message"]
    client.delete("/v1/phone-numbers/+14155550123", headers=AUTH)

    chat_id = client.post("/v1/chats", json={"agent_id": agent_id}, headers=AUTH).json["chat_id"]
    response = client.delete(f"/v1/agents/{agent_id}", headers=AUTH)
    assert response.status_code == 409
    assert "ongoing chat" in response.json["error"]["message"]

    # Once the chat ended, the agent goes; the chat keeps its history and its agent_id.
    client.post(f"/v1/chats/{chat_id}/end", headers=AUTH)
    assert client.delete(f"/v1/agents/{agent_id}", headers=AUTH).status_code == 204
    chat = client.get(f"/v1/chats/{chat_id}", headers=AUTH).json
    assert chat["agent_id"] == agent_id
    assert Agent.get_by_id(agent_id).deleted_at is not None
    # ...and no new chat can use it.
    response = client.post("/v1/chats", json={"agent_id": agent_id}, headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["field"] == "agent_id"


def test_settings_fixture_has_a_key(settings: Settings):
    assert settings.gateway_api_key == GATEWAY_API_KEY


# --- what the document promises, taken at its word ----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("temperature", 1e-50), ("retry_delay", 1e-300), ("retry_delay", 5e-324)]
)
def test_tiny_floats_are_stored_as_sent(client, field, value):
    """Any finite number in the documented range fits the column on both backends (no REAL underflow)."""
    response = create(client, **{field: value})
    assert response.status_code == 201, response.json
    assert client.get(f"/v1/agents/{response.json['agent_id']}", headers=AUTH).json[field] == value


def test_whole_floats_count_as_integers(client):
    """JSON Schema calls 8.0 an integer, so the API takes it (1.5 stays refused, see above)."""
    response = create(client, num_last_messages=8.0, max_reply_parts=3.0)
    assert response.status_code == 201, response.json
    assert response.json["num_last_messages"] == 8
    assert response.json["max_reply_parts"] == 3


def test_ids_match_their_pattern_in_full(client):
    response = create(client, agent_id="agent_nl\n")
    assert response.status_code == 422
    assert response.json["error"]["field"] == "agent_id"
    assert create(client, agent_id="agent_nl").status_code == 201
    assert client.get("/v1/agents/agent_nl%0A", headers=AUTH).status_code == 404


def test_a_body_is_required_where_one_is_documented(client):
    for method, path in [("post", "/v1/agents"), ("patch", "/v1/agents/agent_default")]:
        response = getattr(client, method)(path, headers=AUTH, content_type="application/json")
        assert response.status_code == 400, (method, path)
        assert response.json["error"]["code"] == "invalid_json"
    assert create(client).status_code == 201  # `{}`: every field takes its default


def test_unknown_query_parameters_are_refused(client):
    for path in ("/v1/agents", "/v1/phone-numbers", "/v1/chats", "/v1/agents/agent_default"):
        response = client.get(f"{path}?to_number=%2B14155550123", headers=AUTH)
        assert response.status_code == 422, path
        assert response.json["error"]["field"] == "to_number"
        assert "not a known query parameter" in response.json["error"]["message"]


def test_reply_bounds_spend_caps_and_consent_settings(client):
    """The per-agent fields other parts of the gateway read: defaults, a round trip, bounds."""
    defaults = create(client).json
    assert defaults["max_tokens"] == 1024 and defaults["max_reply_parts"] == 5
    for field in ("replies_per_person_per_hour", "replies_per_person_per_day", "tokens_per_day"):
        assert defaults[field] is None  # the gateway-wide default applies
    assert defaults["limit_notice_message"] is None and defaults["opt_out_hint"] is None
    assert defaults["sending_hours"] is None
    settings = {
        "max_tokens": 300,
        "max_reply_parts": 2,
        "replies_per_person_per_hour": 10,
        "replies_per_person_per_day": 50,
        "tokens_per_day": 100_000,
        "limit_notice_message": "",
        "opt_out_hint": "Text STOP to stop.",
        "sending_hours": {"start": "09:00", "end": "20:30"},
    }
    agent_id = defaults["agent_id"]
    response = client.patch(f"/v1/agents/{agent_id}", json=settings, headers=AUTH)
    assert response.status_code == 200, response.json
    assert {k: response.json[k] for k in settings} == settings
    stored = Agent.get_by_id(agent_id)
    assert stored.sending_hours == {"start": "09:00", "end": "20:30"} and stored.max_reply_parts == 2
    for field, value in [
        ("max_tokens", 0),
        ("max_reply_parts", 51),
        ("replies_per_person_per_hour", 0),
        ("tokens_per_day", 2**31),
        ("opt_out_hint", "x" * 1601),
        ("sending_hours", {"start": "9:00", "end": "20:00"}),
        ("sending_hours", {"start": "24:00", "end": "20:00"}),
        ("sending_hours", {"start": "09:00"}),
    ]:
        response = client.patch(f"/v1/agents/{agent_id}", json={field: value}, headers=AUTH)
        assert response.status_code == 422, (field, value)
        assert response.json["error"]["field"].startswith(field)


def test_an_agent_deleted_during_a_patch_is_404(client, monkeypatch):
    from gateway.api import agents

    agent_id = create(client).json["agent_id"]
    found = agents.get_agent_or_404

    def found_then_deleted(ident):
        agent = found(ident)
        Agent.update(deleted_at=agent.created_at).where(Agent.agent_id == ident).execute()  # a DELETE won
        return agent

    monkeypatch.setattr(agents, "get_agent_or_404", found_then_deleted)
    response = client.patch(f"/v1/agents/{agent_id}", json={"name": "late"}, headers=AUTH)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
