"""Consent traffic (keywords, texts while opted out, the HELP answer) is shown but never read by the model."""

from __future__ import annotations

import pytest
from rq import Queue, SimpleWorker

from gateway.queue import queue_name
from gateway.storage.models import Message, MessageKind
from tests.conftest import GATEWAY_API_KEY, post_twilio
from tests.payloads import inbound_sms
from workers import context

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}


@pytest.fixture
def configured(app, settings):
    """Jobs run in this process see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


def text(client, body: str) -> Message:
    """Text `body` from the person; the message as recorded."""
    form = inbound_sms(body)
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    return Message.get(Message.twilio_sid == form["MessageSid"])


def run_jobs(settings, redis_conn) -> None:
    """Run every queued job in this process."""
    queue = Queue(queue_name(settings), connection=redis_conn)
    SimpleWorker([queue], connection=redis_conn).work(burst=True, with_scheduler=False)


def said_to_model(request: dict) -> list[tuple[str, str]]:
    """(role, content) of the non-system messages of a model request."""
    return [(m["role"], m["content"]) for m in request["messages"] if m["role"] != "system"]


def test_prompt_after_stop_texts_and_start_holds_only_the_new_text(
    client, configured, redis_conn, fake_model
):
    """STOP, a text while opted out, START: none of them reach the model; the next text does."""
    fake_model.reply_with("Welcome back!")
    stop = text(client, "STOP")
    ignored = text(client, "are you there?")
    start = text(client, "START")
    back = text(client, "ok back again")
    run_jobs(configured, redis_conn)

    assert [r.kind for r in (stop, ignored, start, back)] == ["keyword", "opted_out", "keyword", "text"]
    requests = [r for r in fake_model.requests if r.get("messages")]
    assert len(requests) == 1
    assert said_to_model(requests[0]) == [("user", "ok back again")]
    # The transcript keeps everything, with each message's kind.
    detail = client.get(f"/v1/chats/{back.chat_id}", headers=AUTH).get_json()
    assert [m["content"] for m in detail["messages"]] == [
        "are you there?",
        "START",
        "ok back again",
        "Welcome back!",
    ]


def test_help_mid_chat_is_answered_in_the_transcript_and_kept_from_the_model(
    client, configured, redis_conn, fake_model
):
    """HELP gets the help text (stored in the chat); the next prompt holds neither."""
    fake_model.reply_with("Hi! How can I help?")
    first = text(client, "hi")
    run_jobs(configured, redis_conn)
    response = post_twilio(client, "/twilio/sms", inbound_sms("HELP"))
    assert b"Reply STOP to opt out" in response.get_data()
    fake_model.reply_with("It is noon.")
    text(client, "what time is it?")
    run_jobs(configured, redis_conn)

    requests = [r for r in fake_model.requests if r.get("messages")]
    assert said_to_model(requests[-1]) == [
        ("user", "hi"),
        ("assistant", "Hi! How can I help?"),
        ("user", "what time is it?"),
    ]
    detail = client.get(f"/v1/chats/{first.chat_id}", headers=AUTH).get_json()
    contents = [(m["role"], m["content"]) for m in detail["messages"]]
    help_index = contents.index(("user", "HELP"))
    role, answer = contents[help_index + 1]
    assert role == "agent" and "Reply STOP to opt out" in answer
    stored = Message.get((Message.chat == first.chat_id) & (Message.kind == MessageKind.HELP_ANSWER.value))
    assert stored.status == "sent"
