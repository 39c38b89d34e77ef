"""Consent traffic (keywords, texts while opted out, the HELP answer) is shown but never read by the model."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.conversations import consent
from gateway.queue import job_queue, opening_job_id, queue_name
from gateway.storage.models import Agent, Message, MessageKind, PhoneNumber
from tests.conftest import post_twilio
from tests.payloads import OTHER_PERSON, OUR_NUMBER, PERSON, inbound_sms
from tests.test_fallback import AUTH
from tests.test_reply_job import run_jobs
from workers import jobs


def text(client, body: str) -> Message:
    """Text `body` from the person; the message as recorded."""
    form = inbound_sms(body)
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    return Message.get(Message.twilio_sid == form["MessageSid"])


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


def start(client, body: dict) -> dict:
    """POST /v1/sms-chats; the 202 body."""
    response = client.post("/v1/sms-chats", json=body, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def test_opt_out_hint_on_the_first_text_only(client, configured, redis_conn, fake_twilio):
    """The first text started to a person ends with the hint; the next conversation's does not;
    an agent with the hint off sends none."""
    PhoneNumber.create(phone_number=OUR_NUMBER)
    first = start(client, {"from_number": OUR_NUMBER, "to_number": PERSON, "message": "Your table is ready."})
    run_jobs(configured, redis_conn)
    assert fake_twilio.messages[-1]["Body"] == "Your table is ready.\nReply STOP to opt out."
    assert client.post(f"/v1/chats/{first['chat_id']}/end", headers=AUTH).status_code == 200

    start(client, {"from_number": OUR_NUMBER, "to_number": PERSON, "message": "See you soon."})
    run_jobs(configured, redis_conn)
    assert fake_twilio.messages[-1]["Body"] == "See you soon."

    quiet = Agent.create(name="quiet", opt_out_hint="")
    start(
        client,
        {"from_number": OUR_NUMBER, "to_number": OTHER_PERSON, "message": "Hi.", "agent_id": quiet.agent_id},
    )
    run_jobs(configured, redis_conn)
    assert fake_twilio.messages[-1]["Body"] == "Hi."


def test_number_timezone_is_its_own_else_its_countrys_else_utc(app):
    """A number's own timezone wins; else the country's; else UTC."""
    PhoneNumber.create(phone_number="+442071838750", timezone=None)
    PhoneNumber.create(phone_number="+14155550100", timezone="America/Chicago")
    assert consent.number_timezone("+442071838750").key == "Europe/London"
    assert consent.number_timezone("+14155550100").key == "America/Chicago"
    assert consent.number_timezone("+999").key == "UTC"


def test_sending_hours_hold_the_opening_until_the_window_opens(
    client, configured, redis_conn, fake_twilio, monkeypatch
):
    """At 22:00 in New York an opening waits for 09:00 (the API says when, RQ holds the job, the
    job itself refuses to send early); at 09:00 it goes."""
    agent = Agent.create(name="polite", sending_hours={"start": "09:00", "end": "17:00"}, retry_delay=0)
    PhoneNumber.create(phone_number=OUR_NUMBER, outbound_agent=agent, timezone="America/New_York")
    # The clock stands at 22:00 in New York, a few days ahead (stored times stay in its past).
    new_york = ZoneInfo("America/New_York")
    day = (datetime.now(new_york) + timedelta(days=3)).date()
    late = datetime.combine(day, time(22, 0), tzinfo=new_york)
    opens = datetime.combine(day + timedelta(days=1), time(9, 0), tzinfo=new_york).astimezone(UTC)
    frozen = lambda moment: lambda: moment.astimezone(UTC).replace(tzinfo=None)  # noqa: E731
    monkeypatch.setattr(consent, "utcnow", frozen(late))

    body = start(client, {"from_number": OUR_NUMBER, "to_number": PERSON, "message": "Reminder: dentist."})
    assert body["scheduled_for"] == opens.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    queue = job_queue(queue_name(configured), redis_conn)
    job_id = opening_job_id(body["chat_id"])
    assert job_id in queue.scheduled_job_registry.get_job_ids()
    assert queue.scheduled_job_registry.get_scheduled_time(job_id) == opens

    assert jobs.send_opening(body["chat_id"])["parts_sent"] == 0  # run early (a sweep): waits
    assert fake_twilio.messages == []
    monkeypatch.setattr(consent, "utcnow", frozen(opens + timedelta(seconds=5)))
    assert jobs.send_opening(body["chat_id"])["parts_sent"] == 1
    assert fake_twilio.messages[-1]["Body"].startswith("Reminder: dentist.")

    # Inside the window nothing waits.
    monkeypatch.setattr(consent, "utcnow", frozen(opens + timedelta(hours=1)))
    other = start(client, {"from_number": OUR_NUMBER, "to_number": OTHER_PERSON, "message": "Hi."})
    assert other["scheduled_for"] is None
