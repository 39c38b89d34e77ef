"""POST /twilio/sms: signatures, recording, chats, duplicates, keywords and the queued reply."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET

import pytest
from rq import Queue

from gateway import create_app
from gateway.queue import REPLY_JOB, fetch_job, job_queue, queue_name, reply_job_id
from gateway.storage.models import Chat, Contact, Message
from gateway.twilio.keywords import Keyword, match_keyword
from tests import payloads
from tests.conftest import PUBLIC_BASE_URL, post_twilio, sign
from tests.payloads import INBOUND_CASES, OUR_NUMBER, PERSON, inbound_sms

SMS = "/twilio/sms"


def assert_empty_twiml(response) -> None:
    """The answer is 200, text/xml, an empty <Response/>."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/xml"
    root = ET.fromstring(response.get_data())
    assert root.tag == "Response"
    assert list(root) == []


def reply_queue(settings, redis_conn) -> Queue:
    """The RQ queue the web process puts reply jobs on."""
    return job_queue(queue_name(settings), redis_conn)


def reply_job_ids(redis_conn) -> list[str]:
    """Every reply job in Redis, queued or waiting its turn in its chat (RQ rate limit)."""
    ids = (key.decode().removeprefix("rq:job:") for key in redis_conn.scan_iter("rq:job:reply-*"))
    return sorted(job_id for job_id in ids if ":" not in job_id)


@pytest.fixture
def app_with(app, settings):
    """Build another app on the test database and Redis, with some settings changed."""

    def build(**changes):
        return create_app({"TESTING": True, "SETTINGS": settings.model_copy(update=changes)})

    return build


def only_message(sid: str) -> Message:
    """The one message recorded for a MessageSid."""
    return Message.get(Message.twilio_sid == sid)


@pytest.mark.parametrize(
    ("case", "form", "reply_state", "queued"), INBOUND_CASES, ids=[c[0] for c in INBOUND_CASES]
)
def test_inbound_payloads(client, settings, redis_conn, case, form, reply_state, queued):
    """Each real-shaped payload is recorded as Twilio sent it, and queued for a reply if it needs one."""
    response = post_twilio(client, SMS, form)

    if case in {"help", "info"}:
        assert response.status_code == 200
        assert ET.fromstring(response.get_data()).find("Message") is not None
    else:
        assert_empty_twiml(response)
    message = only_message(form["MessageSid"])
    assert message.role == "user"
    assert message.status == "received"
    assert message.content == form["Body"]
    assert message.from_number == PERSON
    assert message.to_number == OUR_NUMBER
    assert message.reply_state == reply_state
    expected_media = [
        {"url": form[f"MediaUrl{i}"], "content_type": form[f"MediaContentType{i}"]}
        for i in range(int(form["NumMedia"]))
    ]
    assert message.media == expected_media

    chat = Chat.get_by_id(message.chat_id)
    assert chat.chat_type == "sms_chat"
    assert (chat.from_number, chat.to_number) == (OUR_NUMBER, PERSON)
    if match_keyword(form["Body"], form.get("OptOutType")) is Keyword.STOP:  # opting out ends the chat
        assert (chat.chat_status, chat.end_reason, chat.ongoing_pair) == ("ended", "opt_out", None)
    else:
        assert (chat.chat_status, chat.ongoing_pair) == ("ongoing", f"{OUR_NUMBER}|{PERSON}")
    assert chat.agent_id == "agent_default"

    job_ids = reply_queue(settings, redis_conn).job_ids
    if queued:
        assert job_ids == [reply_job_id(message.id)]
        job = fetch_job(reply_job_id(message.id), redis_conn)
        assert job.func_name == REPLY_JOB
        assert job.args == [message.id]  # JSON in Redis: a list
        assert job.retries_left == 3  # the default agent's retry_attempts
    else:
        assert reply_job_ids(redis_conn) == []


def test_mms_media_in_order(client):
    """Two attachments keep their order and content types."""
    form = payloads.inbound_mms(
        "two pics",
        [("https://api.twilio.com/m/1", "image/jpeg"), ("https://api.twilio.com/m/2", "video/mp4")],
    )
    assert_empty_twiml(post_twilio(client, SMS, form))
    assert only_message(form["MessageSid"]).media == [
        {"url": "https://api.twilio.com/m/1", "content_type": "image/jpeg"},
        {"url": "https://api.twilio.com/m/2", "content_type": "video/mp4"},
    ]


def test_messages_from_one_pair_share_the_ongoing_chat(client, settings, redis_conn):
    """A second text from the same person lands in the same chat and moves its activity time."""
    first, second = inbound_sms("one"), inbound_sms("two")
    post_twilio(client, SMS, first)
    chat = Chat.get()
    before = chat.last_activity_at
    post_twilio(client, SMS, second)

    assert Chat.select().count() == 1
    assert only_message(second["MessageSid"]).chat_id == chat.chat_id
    assert Chat.get_by_id(chat.chat_id).last_activity_at >= before
    ids = [m.id for m in Message.select().order_by(Message.id)]
    assert reply_job_ids(redis_conn) == sorted(reply_job_id(i) for i in ids)
    # One reply at a time per chat: the first is queued, the second waits for its turn.
    assert reply_queue(settings, redis_conn).job_ids == [reply_job_id(ids[0])]
    assert fetch_job(reply_job_id(ids[1]), redis_conn).get_status() == "rate_limited"
    assert Contact.select().count() == 1


def test_other_person_or_number_gets_another_chat(client):
    """Chats are per (our number, their number) pair."""
    post_twilio(client, SMS, inbound_sms("a"))
    post_twilio(client, SMS, inbound_sms("b", From=payloads.OTHER_PERSON))
    post_twilio(client, SMS, inbound_sms("c", To="+15005550001"))
    pairs = {c.ongoing_pair for c in Chat.select()}
    assert pairs == {
        f"{OUR_NUMBER}|{PERSON}",
        f"{OUR_NUMBER}|{payloads.OTHER_PERSON}",
        f"+15005550001|{PERSON}",
    }


def test_ended_chat_is_not_reused(client):
    """Once a chat has ended, the next text opens a new one."""
    post_twilio(client, SMS, inbound_sms("first"))
    Chat.update(chat_status="ended", ongoing_pair=None).execute()
    form = inbound_sms("again")
    post_twilio(client, SMS, form)
    assert Chat.select().count() == 2
    assert Chat.get_by_id(only_message(form["MessageSid"]).chat_id).chat_status == "ongoing"


def test_number_with_its_own_agent(client):
    """A number configured with an inbound agent gets its chats answered by that agent."""
    from gateway.storage.models import Agent, PhoneNumber

    agent = Agent.create(name="Support", retry_attempts=0)
    PhoneNumber.create(phone_number=OUR_NUMBER, inbound_agent=agent)
    form = inbound_sms("hello support")
    post_twilio(client, SMS, form)
    assert Chat.get_by_id(only_message(form["MessageSid"]).chat_id).agent_id == agent.agent_id


def test_duplicate_message_sid_is_answered_once(client, settings, redis_conn):
    """Twilio retrying (or a replay) gets 200 and no second message, chat or reply job."""
    form = inbound_sms("only once please")
    assert_empty_twiml(post_twilio(client, SMS, form))
    assert_empty_twiml(post_twilio(client, SMS, form))
    assert Message.select().where(Message.twilio_sid == form["MessageSid"]).count() == 1
    assert Chat.select().count() == 1
    assert len(reply_job_ids(redis_conn)) == 1


def test_duplicate_after_chat_ended_opens_nothing(client):
    """A replay arriving after its chat ended does not leave an empty new chat behind."""
    form = inbound_sms("late replay")
    post_twilio(client, SMS, form)
    Chat.update(chat_status="ended", ongoing_pair=None).execute()
    assert_empty_twiml(post_twilio(client, SMS, form))
    assert Chat.select().count() == 1


@pytest.mark.parametrize("signature", ["forged", None], ids=["forged", "missing"])
def test_bad_signature_is_refused(client, settings, redis_conn, signature):
    """A forged or missing X-Twilio-Signature gets 403 and records nothing."""
    form = inbound_sms("let me in")
    forged = sign(PUBLIC_BASE_URL + SMS, form, token="not-the-auth-token")
    response = post_twilio(client, SMS, form, signature=forged if signature == "forged" else None)
    assert response.status_code == 403
    assert Message.select().count() == 0
    assert reply_queue(settings, redis_conn).job_ids == []


def test_tampered_body_is_refused(client):
    """A valid signature for other parameters does not cover a changed Body."""
    form = inbound_sms("original")
    signature = sign(PUBLIC_BASE_URL + SMS, form)
    response = post_twilio(client, SMS, {**form, "Body": "changed"}, signature=signature)
    assert response.status_code == 403


def test_request_seen_through_a_proxy(client):
    """Twilio signs https://sms.example.test/...; the app sees http://localhost/...: accepted."""
    form = inbound_sms("through the tunnel")
    signature = sign("https://sms.example.test/twilio/sms", form)
    response = client.post(
        "http://localhost/twilio/sms",
        data=form,
        headers={"X-Twilio-Signature": signature, "X-Forwarded-Proto": "https"},
    )
    assert_empty_twiml(response)
    assert only_message(form["MessageSid"]).content == "through the tunnel"


def test_signature_for_another_host_is_refused(client):
    """A signature computed for a host that is not PUBLIC_BASE_URL fails."""
    form = inbound_sms("wrong host")
    signature = sign("https://evil.example.test/twilio/sms", form)
    response = post_twilio(client, SMS, form, signature=signature)
    assert response.status_code == 403
    assert Message.select().count() == 0


def test_signature_covers_the_query_string(client):
    """A webhook URL with a query string is signed with it."""
    form = inbound_sms("with query")
    signature = sign(PUBLIC_BASE_URL + SMS + "?source=tf", form)
    ok = client.post(SMS + "?source=tf", data=form, headers={"X-Twilio-Signature": signature})
    assert_empty_twiml(ok)
    form2 = inbound_sms("without query")
    refused = client.post(
        SMS + "?source=other", data=form2, headers={"X-Twilio-Signature": sign(PUBLIC_BASE_URL + SMS, form2)}
    )
    assert refused.status_code == 403


def test_without_public_base_url_the_request_url_is_signed(app_with):
    """PUBLIC_BASE_URL unset: the signature is checked against the URL the app sees."""
    app = app_with(public_base_url=None)
    client = app.test_client()
    form = inbound_sms("direct")
    response = client.post(
        "http://gateway.internal/twilio/sms",
        data=form,
        headers={"X-Twilio-Signature": sign("http://gateway.internal/twilio/sms", form)},
    )
    assert_empty_twiml(response)
    form2 = inbound_sms("direct but signed for https")
    response = client.post(
        "http://gateway.internal/twilio/sms",
        data=form2,
        headers={"X-Twilio-Signature": sign("https://gateway.internal/twilio/sms", form2)},
    )
    assert response.status_code == 403


def test_checks_off_accepts_unsigned(app_with):
    """TWILIO_VALIDATE_SIGNATURES=0 (development) lets unsigned requests in."""
    app = app_with(twilio_validate_signatures=False)
    form = inbound_sms("unsigned")
    assert_empty_twiml(app.test_client().post(SMS, data=form))


def test_no_auth_token_refuses(app_with):
    """Signature checks on but no TWILIO_AUTH_TOKEN: nothing can be verified, so 403."""
    app = app_with(twilio_auth_token=None)
    form = inbound_sms("who signs?")
    response = post_twilio(app.test_client(), SMS, form)
    assert response.status_code == 403


@pytest.mark.parametrize("missing", ["MessageSid", "From", "To"])
def test_missing_basics_is_a_readable_400(client, missing):
    """A form without MessageSid, From or To is refused with a reason a person can read."""
    form = inbound_sms("incomplete")
    for name in {"MessageSid", "SmsMessageSid", "SmsSid"} if missing == "MessageSid" else {missing}:
        form.pop(name)
    response = post_twilio(client, SMS, form)
    assert response.status_code == 400
    assert missing in response.get_data(as_text=True)
    assert Message.select().count() == 0


def test_redis_down_still_answers_and_records(client, settings, redis_server, redis_conn):
    """Redis unreachable: 200 <Response/>, the message is recorded pending for the sweep."""
    form = inbound_sms("is anyone there?")
    redis_server.stop()
    try:
        response = post_twilio(client, SMS, form)
    finally:
        redis_server.start()
    assert_empty_twiml(response)
    message = only_message(form["MessageSid"])
    assert message.reply_state == "pending"
    assert reply_queue(settings, redis_conn).job_ids == []


def test_no_redis_configured_still_answers(app_with):
    """No REDIS_URL at all: the message is recorded pending, Twilio gets its 200."""
    app = app_with(redis_url=None)
    form = inbound_sms("no queue")
    assert_empty_twiml(post_twilio(app.test_client(), SMS, form))
    assert only_message(form["MessageSid"]).reply_state == "pending"


def test_concurrent_first_messages_open_one_chat(app, settings, redis_conn):
    """Two first texts from one pair racing each other end up in one chat with one contact."""
    forms = [inbound_sms(f"racing {i}") for i in range(6)]
    barrier = threading.Barrier(len(forms))
    statuses: list[int] = []

    def send(form):
        client = app.test_client()
        barrier.wait()
        statuses.append(post_twilio(client, SMS, form).status_code)

    threads = [threading.Thread(target=send, args=(form,)) for form in forms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [200] * len(forms)
    assert Chat.select().count() == 1
    assert Contact.select().count() == 1
    assert Message.select().count() == len(forms)
    assert len(reply_job_ids(redis_conn)) == len(forms)


def test_concurrent_duplicates_record_one_message(app, settings, redis_conn):
    """The same MessageSid delivered twice at once is recorded and queued once."""
    form = inbound_sms("twice at once")
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def send():
        client = app.test_client()
        barrier.wait()
        statuses.append(post_twilio(client, SMS, form).status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [200] * 4
    assert Message.select().count() == 1
    assert len(reply_job_ids(redis_conn)) == 1


def test_chat_ending_between_read_and_write_opens_a_new_chat(client, monkeypatch):
    """If the ongoing chat ends after the lookup but before the write, the text opens a new chat."""
    from gateway.conversations import sessions
    from gateway.twilio import webhooks as twilio_webhooks

    post_twilio(client, SMS, inbound_sms("first"))
    first_chat = Chat.get()

    def lookup_then_end(our, theirs):
        found = sessions.find_inbound(our, theirs)
        Chat.update(chat_status="ended", ongoing_pair=None).execute()  # the silence sweep, say
        return found

    monkeypatch.setattr(twilio_webhooks, "find_inbound", lookup_then_end)
    form = inbound_sms("second")
    assert_empty_twiml(post_twilio(client, SMS, form))
    message = only_message(form["MessageSid"])
    assert message.chat_id != first_chat.chat_id
    assert Chat.get_by_id(message.chat_id).chat_status == "ongoing"


def test_chat_without_contact_gets_one(client):
    """An ongoing chat opened without a contact row (outbound) gets the contact on the first reply."""
    from gateway.conversations.agents import default_agent

    Chat.create(
        agent=default_agent(),
        chat_type="sms_chat",
        from_number=OUR_NUMBER,
        to_number=PERSON,
        ongoing_pair=f"{OUR_NUMBER}|{PERSON}",
    )
    form = inbound_sms("replying to your text")
    assert_empty_twiml(post_twilio(client, SMS, form))
    assert only_message(form["MessageSid"]).chat_id == Chat.get().chat_id
    assert Contact.select().count() == 1


def test_a_database_outage_is_a_503_in_one_log_line(client, monkeypatch, caplog):
    """The database gone (a restart): the webhook says 503 and Retry-After (nothing was recorded, so
    Twilio may try again), /v1 its JSON error; one log line each, no traceback."""
    from peewee import OperationalError

    from gateway.api import agents
    from gateway.twilio import webhooks
    from tests.conftest import GATEWAY_API_KEY

    def gone(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly\n\tThis probably means ...")

    monkeypatch.setattr(webhooks, "record_inbound", gone)
    monkeypatch.setattr(agents, "default_agent", gone)
    caplog.set_level("WARNING")
    response = post_twilio(client, SMS, inbound_sms("hello?"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "database is unreachable" in response.get_data(as_text=True)
    api = client.get("/v1/agents", headers={"Authorization": f"Bearer {GATEWAY_API_KEY}"})
    assert api.status_code == 503 and api.get_json()["error"]["code"] == "unavailable"
    lines = [r for r in caplog.records if "database is unreachable" in r.getMessage()]
    assert len(lines) == 2 and not any(r.exc_info for r in caplog.records)
    assert "server closed the connection unexpectedly" in lines[0].getMessage()
