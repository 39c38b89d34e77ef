"""POST /v1/sms-chats: outbound SMS conversations, refused cleanly, started once, answered in one chat."""

from __future__ import annotations

import pytest

from gateway.queue import job_queue, opening_job_id, queue_name
from gateway.storage.models import Chat, Contact, Message, PhoneNumber
from tests.conftest import GATEWAY_API_KEY, post_twilio, wait_for

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
OURS = "+14155550100"
THEIRS = "+14155550123"


@pytest.fixture
def our_number(app):
    """One of our numbers, registered with the gateway."""
    return PhoneNumber.create(phone_number=OURS)


def start(client, body: dict, **headers):
    """POST /v1/sms-chats with the API key."""
    return client.post("/v1/sms-chats", json=body, headers={**AUTH, **headers})


def test_with_message_records_the_text_and_queues_the_send(client, our_number, settings, redis_conn):
    """202 with the new sms_chat; the opening text is stored before anything is sent; a job is queued."""
    response = start(client, {"from_number": OURS, "to_number": THEIRS, "message": "Your table is ready."})
    assert response.status_code == 202, response.json
    chat = response.json
    assert chat["chat_type"] == "sms_chat" and chat["chat_status"] == "ongoing"
    assert chat["from_number"] == OURS and chat["to_number"] == THEIRS
    assert [m["content"] for m in chat["messages"]] == ["Your table is ready.\nReply STOP to opt out."]
    assert chat["messages"][0]["role"] == "agent" and chat["messages"][0]["status"] == "queued"
    assert job_queue(queue_name(settings), redis_conn).job_ids == [opening_job_id(chat["chat_id"])]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"from_number": "+14155550199", "to_number": THEIRS}, "from_number"),  # not ours
        ({"from_number": OURS, "to_number": "+1415555"}, "to_number"),  # not a valid number
        ({"from_number": OURS, "to_number": "not a number"}, "to_number"),
        ({"from_number": OURS, "to_number": THEIRS, "agent_id": "agent_nope"}, "agent_id"),
        ({"from_number": OURS, "to_number": THEIRS, "media_urls": ["ftp://x/y.png"]}, "media_urls"),
        (
            {"from_number": OURS, "to_number": THEIRS, "media_urls": ["https://x.test/a.png"] * 11},
            "media_urls",
        ),
        ({"from_number": OURS}, "to_number"),
    ],
)
def test_refused_with_the_field_named_and_nothing_started(
    client, our_number, body, field, settings, redis_conn
):
    """Bad requests are 422s naming the field; no chat, no job."""
    response = start(client, body)
    assert response.status_code == 422, response.json
    assert response.json["error"]["field"] == field
    assert Chat.select().count() == 0
    assert job_queue(queue_name(settings), redis_conn).count == 0


def test_opted_out_contact_is_refused(client, our_number):
    """A person who texted STOP to this number is not texted; 409 says why."""
    Contact.create(our_number=OURS, phone_number=THEIRS, opted_out=True)
    response = start(client, {"from_number": OURS, "to_number": THEIRS, "message": "hi"})
    assert response.status_code == 409
    assert response.json["error"]["code"] == "opted_out"
    assert Chat.select().count() == 0


def test_second_conversation_while_one_is_ongoing_is_refused(client, our_number):
    """One ongoing chat per number pair: a second start names the ongoing chat."""
    first = start(client, {"from_number": OURS, "to_number": THEIRS, "message": "one"})
    second = start(client, {"from_number": OURS, "to_number": THEIRS, "message": "two"})
    assert second.status_code == 409
    assert first.json["chat_id"] in second.json["error"]["message"]


def test_idempotency_key_replays_the_first_answer(client, our_number, settings, redis_conn):
    """A retried request with the same key gets the first response and starts nothing twice."""
    body = {"from_number": OURS, "to_number": THEIRS, "message": "hello", "metadata": {"order": 7}}
    first = start(client, body, **{"Idempotency-Key": "k-123"})
    again = start(client, body, **{"Idempotency-Key": "k-123"})
    assert first.status_code == again.status_code == 202
    assert again.json == first.json
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert Chat.select().count() == 1 and Message.select().count() == 1
    assert len(job_queue(queue_name(settings), redis_conn).job_ids) == 1

    other = start(client, {**body, "message": "different"}, **{"Idempotency-Key": "k-123"})
    assert other.status_code == 409
    assert other.json["error"]["code"] == "idempotency_key_reused"


def test_redis_down_still_records_the_chat(client, our_number, redis_server):
    """With Redis down the chat and its text are recorded (202); the worker's sweep sends it later."""
    redis_server.stop()
    try:
        response = start(client, {"from_number": OURS, "to_number": THEIRS, "message": "hi"})
    finally:
        redis_server.start()
    assert response.status_code == 202
    assert Message.get().status == "queued"


def test_outbound_then_answer_continues_the_same_chat(client, our_number, worker, fake_twilio, fake_model):
    """The agent writes the opening text; the person's answer lands in the same chat and is answered."""
    fake_model.queue_replies(["Hi Ada! Your **appointment** is tomorrow at 10. Does that still work?"])
    response = start(
        client,
        {"from_number": OURS, "to_number": THEIRS, "dynamic_variables": {"name": "Ada"}},
    )
    assert response.status_code == 202
    chat_id = response.json["chat_id"]
    [opening] = fake_twilio.wait_for_messages(1, timeout=30)  # the worker may still be starting
    assert opening["From"] == OURS and opening["To"] == THEIRS
    assert (
        opening["Body"]
        == "Hi Ada! Your appointment is tomorrow at 10. Does that still work?\nReply STOP to opt out."
    )
    assert opening["StatusCallback"].endswith("/twilio/status")
    first_request = fake_model.requests[0]
    assert "starting this text conversation" in first_request["messages"][-1]["content"]

    fake_model.queue_replies(["Great, see you then."])
    answered = post_twilio(
        client,
        "/twilio/sms",
        {"MessageSid": "SM" + "a" * 32, "From": THEIRS, "To": OURS, "Body": "Yes, it works", "NumMedia": "0"},
    )
    assert answered.status_code == 200
    fake_twilio.wait_for_messages(2, timeout=30)
    assert Chat.select().count() == 1
    chat = client.get(f"/v1/chats/{chat_id}", headers=AUTH).json
    roles = [(m["role"], m["content"]) for m in chat["messages"]]
    assert roles[0][0] == "agent" and roles[1] == ("user", "Yes, it works")
    assert roles[2] == ("agent", "Great, see you then.")
    # The model saw its own opening text as the conversation so far.
    second_request = fake_model.requests[-1]
    assert any("appointment is tomorrow" in m["content"] for m in second_request["messages"])


def test_given_message_and_media_are_sent_as_is(client, our_number, worker, fake_twilio, fake_model):
    """With `message` the text is sent as written (no model call), with its media URLs."""
    response = start(
        client,
        {
            "from_number": OURS,
            "to_number": THEIRS,
            "message": "Here is **your** receipt",
            "media_urls": ["https://cdn.example.test/r.png", "https://cdn.example.test/r2.png"],
        },
    )
    assert response.status_code == 202
    [sent] = fake_twilio.wait_for_messages(1, timeout=30)  # the worker may still be starting
    assert sent["Body"] == "Here is **your** receipt\nReply STOP to opt out."
    assert sent["MediaUrl"] == ["https://cdn.example.test/r.png", "https://cdn.example.test/r2.png"]
    assert fake_model.requests == []
    wait_for(lambda: Message.get().twilio_sid, message="the SID stored")


def test_permanent_twilio_error_is_recorded(client, our_number, worker, fake_twilio):
    """A destination Twilio refuses (21211) fails the opening with the reason, once."""
    fake_twilio.fail_to(THEIRS, code=21211, status=400)
    start(client, {"from_number": OURS, "to_number": THEIRS, "message": "hello"})
    part = wait_for(lambda: Message.get_or_none(Message.status == "failed"), message="the failed part")
    assert part.error_code == "21211"
    assert "not a valid phone number" in part.error_message
    assert len(fake_twilio.attempts) == 1
