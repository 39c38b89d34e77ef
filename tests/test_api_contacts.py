"""/v1/contacts: a person's opt-out state, chats and profile; the do-not-text list; export and erase."""

from __future__ import annotations

from urllib.parse import quote

from gateway.storage.models import PhoneNumber, UserProfile
from tests.conftest import GATEWAY_API_KEY, post_twilio
from tests.payloads import OUR_NUMBER, PERSON, inbound_sms

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
CONTACT = f"/v1/contacts/{quote(PERSON)}"


def start(client):
    """POST /v1/sms-chats to the person."""
    return client.post(
        "/v1/sms-chats", json={"from_number": OUR_NUMBER, "to_number": PERSON, "message": "Hi!"}, headers=AUTH
    )


def test_an_opt_out_set_through_the_api_is_honoured_by_sms_chats(client):
    """A business's own do-not-text list: sms-chats refuses while it holds, and starts once lifted."""
    PhoneNumber.create(phone_number=OUR_NUMBER)
    response = client.put(
        f"{CONTACT}/opt-out", json={"our_number": OUR_NUMBER, "opted_out": True}, headers=AUTH
    )
    assert response.status_code == 200, response.json
    [number] = response.json["numbers"]
    assert (number["our_number"], number["opted_out"]) == (OUR_NUMBER, True)
    assert number["opted_out_at"].endswith("Z")

    refused = start(client)
    assert refused.status_code == 409 and refused.json["error"]["code"] == "opted_out"

    client.put(f"{CONTACT}/opt-out", json={"our_number": OUR_NUMBER, "opted_out": False}, headers=AUTH)
    assert start(client).status_code == 202


def test_contact_shows_chats_profile_and_kinds_then_export_and_erase(client):
    """Any spelling of the number finds the person; the export holds their texts; erase leaves nothing."""
    PhoneNumber.create(phone_number=OUR_NUMBER)
    post_twilio(client, "/twilio/sms", inbound_sms("Hello"))
    post_twilio(client, "/twilio/sms", inbound_sms("HELP"))
    UserProfile.create(key=f"phone:{PERSON}", profile={"name": "Ada"})

    found = client.get(f"/v1/contacts/{quote('+1 (415) 555-0123')}", headers=AUTH)
    assert found.status_code == 200, found.json
    assert found.json["phone_number"] == PERSON
    assert found.json["profile"] == {"name": "Ada"}
    [chat] = found.json["chats"]
    assert found.json["numbers"][0]["opted_out"] is False
    detail = client.get(f"/v1/chats/{chat['chat_id']}", headers=AUTH).json
    assert [(m["content"], m["kind"]) for m in detail["messages"]][:2] == [
        ("Hello", "text"),
        ("HELP", "keyword"),
    ]
    assert detail["messages"][2]["kind"] == "help_answer"

    exported = client.get(f"{CONTACT}/export", headers=AUTH)
    assert exported.status_code == 200
    assert [m["content"] for m in exported.json["chats"][0]["messages"]][:2] == ["Hello", "HELP"]

    erased = client.delete(CONTACT, headers=AUTH)
    assert erased.status_code == 200
    assert erased.json["erased"]["chats"] == 1 and erased.json["erased"]["profiles"] == 1
    assert client.get(CONTACT, headers=AUTH).status_code == 404


def test_contact_errors(client):
    """An invalid number is a 422; a number not ours cannot be opted out of; nothing stored is a 404."""
    assert client.get("/v1/contacts/12345", headers=AUTH).status_code == 422
    assert client.get(CONTACT, headers=AUTH).status_code == 404
    response = client.put(
        f"{CONTACT}/opt-out", json={"our_number": OUR_NUMBER, "opted_out": True}, headers=AUTH
    )
    assert response.status_code == 422 and response.json["error"]["field"] == "our_number"
