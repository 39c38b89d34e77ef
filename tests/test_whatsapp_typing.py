"""The WhatsApp typing indicator while the model works: shown, and harmless when Twilio fails it."""

from __future__ import annotations

import logging
import threading

from gateway.conversations import replies
from gateway.storage.models import Message
from gateway.twilio import client as twilio_client_module
from tests.conftest import post_twilio, wait_for
from tests.payloads import inbound_sms, inbound_whatsapp


def record(client, form: dict[str, str]) -> Message:
    """POST the webhook form; the message as recorded."""
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    return Message.get(Message.twilio_sid == form["MessageSid"])


def test_typing_indicator_is_shown_for_the_message_being_answered(client, settings, fake_model, fake_twilio):
    message = record(client, inbound_whatsapp("What are your opening hours?"))
    fake_model.reply_with("9 to 5.")
    assert replies.answer_message(settings, message.id).outcome == "answered"
    typing = wait_for(lambda: fake_twilio.typing, message="the typing indicator")
    assert [(t["channel"], t["messageId"]) for t in typing] == [("whatsapp", message.twilio_sid)]


def test_no_typing_indicator_on_sms(client, settings, fake_model, fake_twilio):
    message = record(client, inbound_sms("What are your opening hours?"))
    fake_model.reply_with("9 to 5.")
    replies.answer_message(settings, message.id)
    assert fake_twilio.messages and fake_twilio.typing == []


def test_a_failing_typing_indicator_neither_fails_nor_holds_the_reply(
    client, settings, fake_model, fake_twilio, monkeypatch, caplog
):
    caplog.set_level(logging.DEBUG, logger="gateway.twilio.client")  # "once" may have been used up
    fake_twilio.typing_failure = 500
    message = record(client, inbound_whatsapp("first"))
    fake_model.reply_with("Hello!")
    threads: list[threading.Thread] = []
    original = twilio_client_module.show_typing
    monkeypatch.setattr(replies, "show_typing", lambda *a: threads.append(t := original(*a)) or t)
    assert replies.answer_message(settings, message.id).outcome == "answered"
    assert fake_twilio.messages[-1]["Body"] == "Hello!"
    threads[0].join(timeout=10)
    assert "typing indicator" in caplog.text and message.twilio_sid in caplog.text

    # A typing indicator that hangs: the reply is sent while it still waits.
    monkeypatch.setattr(twilio_client_module, "TYPING_TIMEOUT", 120.0)
    fake_twilio.typing_failure, fake_twilio.typing_latency = None, 120
    second = record(client, inbound_whatsapp("second"))
    assert replies.answer_message(settings, second.id).outcome == "answered"
    assert len(fake_twilio.messages) == 2
    assert threads[1].is_alive()  # still waiting on Twilio; the reply did not
    assert Message.get_by_id(second.id).reply_state == "answered"


def test_a_twilio_library_without_the_indicator_is_logged_once_and_the_reply_goes_out(
    client, settings, fake_model, fake_twilio, monkeypatch, caplog
):
    from twilio.rest.messaging.v2 import V2

    caplog.set_level(logging.DEBUG, logger="gateway.twilio.client")
    monkeypatch.delattr(V2, "typing_indicator")  # as in a twilio release before 9.8.2
    monkeypatch.setattr(twilio_client_module, "_typing_missing_logged", threading.Event())
    for text in ("first", "second"):
        message = record(client, inbound_whatsapp(text))
        fake_model.reply_with("Hello!")
        assert replies.answer_message(settings, message.id).outcome == "answered"
    assert [m["Body"] for m in fake_twilio.messages] == ["Hello!", "Hello!"]
    assert fake_twilio.typing == []
    unavailable = [r for r in caplog.records if "typing indicators are unavailable" in r.getMessage()]
    assert len(unavailable) == 1 and unavailable[0].levelname == "WARNING"
    assert twilio_client_module.TYPING_SINCE in unavailable[0].getMessage()
