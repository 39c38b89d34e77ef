"""The /v1 phone numbers API: E.164 numbers and the agents that answer on them."""

from __future__ import annotations

import pytest

from gateway.conversations.agents import inbound_agent_for, outbound_agent_for
from tests.conftest import GATEWAY_API_KEY

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
NUMBER = "+14155550123"


def new_agent(client, **fields) -> str:
    """Create an agent; its id."""
    return client.post("/v1/agents", json=fields, headers=AUTH).json["agent_id"]


def test_create_read_list_update_delete(client):
    inbound = new_agent(client, name="in")
    outbound = new_agent(client, name="out")
    response = client.post(
        "/v1/phone-numbers",
        json={"phone_number": NUMBER, "inbound_agent_id": inbound, "outbound_agent_id": outbound},
        headers=AUTH,
    )
    assert response.status_code == 201, response.json
    number = response.json
    assert number["phone_number"] == NUMBER
    assert number["inbound_agent_id"] == inbound
    assert number["outbound_agent_id"] == outbound
    assert number["created_at"].endswith("Z")

    assert client.get(f"/v1/phone-numbers/{NUMBER}", headers=AUTH).json == number
    assert client.get("/v1/phone-numbers/%2B14155550123", headers=AUTH).json == number
    assert client.get("/v1/phone-numbers", headers=AUTH).json == {"items": [number]}
    assert inbound_agent_for(NUMBER).agent_id == inbound
    assert outbound_agent_for(NUMBER).agent_id == outbound

    response = client.patch(f"/v1/phone-numbers/{NUMBER}", json={"inbound_agent_id": None}, headers=AUTH)
    assert response.status_code == 200
    assert response.json["inbound_agent_id"] is None
    assert response.json["outbound_agent_id"] == outbound
    assert inbound_agent_for(NUMBER).agent_id == "agent_default"  # no agent: the default answers

    assert client.delete(f"/v1/phone-numbers/{NUMBER}", headers=AUTH).status_code == 204
    assert client.get(f"/v1/phone-numbers/{NUMBER}", headers=AUTH).status_code == 404
    assert client.get("/v1/phone-numbers", headers=AUTH).json == {"items": []}


def test_numbers_are_stored_in_e164_form(client):
    response = client.post("/v1/phone-numbers", json={"phone_number": "+1 (415) 555-0123"}, headers=AUTH)
    assert response.status_code == 201
    assert response.json["phone_number"] == NUMBER
    assert response.json["inbound_agent_id"] is None
    response = client.post("/v1/phone-numbers", json={"phone_number": NUMBER}, headers=AUTH)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "phone_number_exists"


@pytest.mark.parametrize(
    "value",
    ["+15551234567", "4155550123", "+1415555012", "not a number", "", 14155550123, None, "+" + "1" * 40],
)
def test_invalid_numbers_are_422(client, value):
    response = client.post("/v1/phone-numbers", json={"phone_number": value}, headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["field"] == "phone_number"


def test_missing_number_is_422(client):
    response = client.post("/v1/phone-numbers", json={"inbound_agent_id": None}, headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["field"] == "phone_number"
    assert "required" in response.json["error"]["message"]


@pytest.mark.parametrize("field", ["inbound_agent_id", "outbound_agent_id"])
def test_unknown_agents_are_422_naming_the_field(client, field):
    response = client.post(
        "/v1/phone-numbers", json={"phone_number": NUMBER, field: "agent_nope"}, headers=AUTH
    )
    assert response.status_code == 422
    assert response.json["error"]["field"] == field
    client.post("/v1/phone-numbers", json={"phone_number": NUMBER}, headers=AUTH)
    response = client.patch(f"/v1/phone-numbers/{NUMBER}", json={field: 7}, headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["field"] == field
    response = client.patch(f"/v1/phone-numbers/{NUMBER}", json={field: "agent_nope"}, headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["field"] == field


def test_a_deleted_agent_cannot_be_assigned(client):
    agent_id = new_agent(client)
    client.delete(f"/v1/agents/{agent_id}", headers=AUTH)
    response = client.post(
        "/v1/phone-numbers", json={"phone_number": NUMBER, "inbound_agent_id": agent_id}, headers=AUTH
    )
    assert response.status_code == 422
    assert response.json["error"]["field"] == "inbound_agent_id"


def test_the_default_agent_can_be_assigned(client):
    response = client.post(
        "/v1/phone-numbers", json={"phone_number": NUMBER, "inbound_agent_id": "agent_default"}, headers=AUTH
    )
    assert response.status_code == 201
    assert response.json["inbound_agent_id"] == "agent_default"


def test_patch_cannot_change_the_number(client):
    client.post("/v1/phone-numbers", json={"phone_number": NUMBER}, headers=AUTH)
    response = client.patch(
        f"/v1/phone-numbers/{NUMBER}", json={"phone_number": "+14155552671"}, headers=AUTH
    )
    assert response.status_code == 422
    assert response.json["error"]["field"] == "phone_number"


@pytest.mark.parametrize("path", ["/v1/phone-numbers/+14155552671", "/v1/phone-numbers/garbage"])
def test_unknown_numbers_are_404(client, path):
    for method in ("get", "patch", "delete"):
        response = getattr(client, method)(path, headers=AUTH, json={})
        assert response.status_code == 404
        assert response.json["error"]["code"] == "not_found"


def test_a_number_deleted_during_a_patch_is_404(client, monkeypatch):
    """PATCH racing DELETE: the row vanishing between the lookup and the update is a 404, not a 500."""
    from gateway.api import phone_numbers
    from gateway.storage.models import PhoneNumber

    client.post("/v1/phone-numbers", json={"phone_number": NUMBER}, headers=AUTH)
    found = phone_numbers.get_number_or_404

    def found_then_deleted(number):
        row = found(number)
        PhoneNumber.delete().where(PhoneNumber.phone_number == row.phone_number).execute()  # a DELETE won
        return row

    monkeypatch.setattr(phone_numbers, "get_number_or_404", found_then_deleted)
    response = client.patch(f"/v1/phone-numbers/{NUMBER}", json={"inbound_agent_id": None}, headers=AUTH)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_a_vanished_row_is_404_everywhere(client, monkeypatch):
    """Any lookup that finds nothing mid-request (peewee's DoesNotExist) answers 404 under /v1."""
    from gateway.api import phone_numbers
    from gateway.storage.models import PhoneNumber

    client.post("/v1/phone-numbers", json={"phone_number": NUMBER}, headers=AUTH)

    def vanished(number):
        raise PhoneNumber.DoesNotExist(number)

    monkeypatch.setattr(phone_numbers, "phone_number_out", vanished)
    response = client.get(f"/v1/phone-numbers/{NUMBER}", headers=AUTH)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_timezone(client):
    response = client.post(
        "/v1/phone-numbers", json={"phone_number": NUMBER, "timezone": "America/Los_Angeles"}, headers=AUTH
    )
    assert response.status_code == 201, response.json
    assert response.json["timezone"] == "America/Los_Angeles"
    response = client.patch(f"/v1/phone-numbers/{NUMBER}", json={"timezone": None}, headers=AUTH)
    assert response.json["timezone"] is None
    for value in ("Mars/Olympus", "", 5, "../etc/passwd"):
        response = client.patch(f"/v1/phone-numbers/{NUMBER}", json={"timezone": value}, headers=AUTH)
        assert response.status_code == 422, value
        assert response.json["error"]["field"] == "timezone"


def test_patch_racing_delete_is_200_or_404(app):
    """Two real requests at once, a PATCH and a DELETE of one number: never a 500."""
    import threading

    def run(method: str, start: threading.Barrier, results: dict, body: dict | None = None) -> None:
        start.wait()
        kwargs = {"json": body} if body is not None else {}
        results[method] = getattr(app.test_client(), method)(
            f"/v1/phone-numbers/{NUMBER}", headers=AUTH, **kwargs
        )

    client = app.test_client()
    for _ in range(8):
        assert (
            client.post("/v1/phone-numbers", json={"phone_number": NUMBER}, headers=AUTH).status_code == 201
        )
        start, results = threading.Barrier(2), {}
        threads = [
            threading.Thread(
                target=run, args=("patch", start, results, {"inbound_agent_id": "agent_default"})
            ),
            threading.Thread(target=run, args=("delete", start, results)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results["delete"].status_code == 204
        # Which request wins is the scheduler's choice; either answer is right, a 500 never is.
        assert results["patch"].status_code in (200, 404), results["patch"].json
