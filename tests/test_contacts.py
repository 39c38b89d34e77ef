"""A person by their number: export everything stored about them, erase it all, retention."""

from __future__ import annotations

import contextlib
import json
import zlib
from datetime import timedelta
from urllib.parse import quote

from click.testing import CliRunner
from redis import Redis
from rq.job import Job

from gateway.agent import spend
from gateway.cli import main
from gateway.config import settings_to_env
from gateway.conversations.agents import default_agent
from gateway.conversations.retention import delete_expired
from gateway.events import DELIVER_JOB, EVENTS
from gateway.queue import JobSerializer, job_queue, queue_name, reply_job_id
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, Message, PhoneNumber, UserProfile, utcnow
from tests.conftest import GATEWAY_API_KEY, free_port, post_twilio
from tests.payloads import OTHER_PERSON, OUR_NUMBER, PERSON, inbound_mms, inbound_sms

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
DIGITS = PERSON.lstrip("+")[-10:]  # the number however it is spelled


def rows_mentioning(needle: str) -> list[tuple[str, str]]:
    """(table, column) of every stored value, in every table, that contains `needle`."""
    found = []
    for table in database.get_tables():
        if table == "schema_migration":
            continue
        cursor = database.execute_sql(f'SELECT * FROM "{table}"')
        columns = [d[0] for d in cursor.description]
        for row in cursor.fetchall():
            found += [(table, col) for col, value in zip(columns, row, strict=True) if needle in str(value)]
    return found


def cli(settings, *args: str):
    """Run `smsgw ...` with the test settings in its environment."""
    result = CliRunner().invoke(main, list(args), env=settings_to_env(settings), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def redis_values_mentioning(redis: Redis, needle: str) -> list[str]:
    """Every Redis key whose name or value (any type; RQ's zlib-compressed job data unpacked)
    contains `needle`."""
    found = []
    for key in redis.scan_iter(count=1000):
        kind = redis.type(key).decode()
        if kind == "string":
            values = [redis.get(key)]
        elif kind == "hash":
            values = [v for pair in redis.hgetall(key).items() for v in pair]
        elif kind == "list":
            values = redis.lrange(key, 0, -1)
        elif kind == "set":
            values = list(redis.smembers(key))
        elif kind == "zset":
            values = redis.zrange(key, 0, -1)
        elif kind == "stream":
            values = [v for _, fields in redis.xrange(key) for pair in fields.items() for v in pair]
        else:
            values = []
        texts = [key]
        for value in values:
            if isinstance(value, bytes):
                with contextlib.suppress(zlib.error):
                    value = zlib.decompress(value)
            texts.append(value)
        if any(needle in (t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)) for t in texts):
            found.append(key.decode())
    return found


def store_a_person(client, settings) -> None:
    """Texts (one with a picture, one HELP), an outbound start with an idempotency key, a profile."""
    PhoneNumber.create(phone_number=OUR_NUMBER)
    response = client.post(
        "/v1/sms-chats",
        json={"from_number": OUR_NUMBER, "to_number": PERSON, "message": "Your table is ready."},
        headers={**AUTH, "Idempotency-Key": "table-ready-1"},
    )
    assert response.status_code in (202,), response.get_json()
    post_twilio(client, "/twilio/sms", inbound_sms("Hi, I am Ada"))
    post_twilio(
        client, "/twilio/sms", inbound_mms("my cat", [("https://api.twilio.com/media/ME1", "image/png")])
    )
    post_twilio(client, "/twilio/sms", inbound_sms("HELP"))
    post_twilio(client, "/twilio/sms", inbound_sms("STOP"))  # ends the chat
    post_twilio(client, "/twilio/sms", inbound_sms("START"))
    UserProfile.create(key=f"phone:{PERSON}", profile={"name": "Ada"})
    # Somebody else, who must keep everything.
    post_twilio(client, "/twilio/sms", inbound_sms("hello from the other one", From=OTHER_PERSON))


def test_export_then_erase_leaves_no_row_mentioning_the_number(client, settings, redis_conn):
    """The export holds every chat, message, media reference, profile and key; after the erase,
    no table holds the number, nor any Redis key or value (queued jobs, event deliveries queued,
    scheduled, failed or finished, the spend guard's counters); the other person keeps theirs."""
    # The agent's webhook takes every event, and its receiver is down: deliveries stay in Redis.
    Agent.update(webhook_url=f"http://127.0.0.1:{free_port()}/events", webhook_events=list(EVENTS)).where(
        Agent.agent_id == default_agent().agent_id
    ).execute()
    store_a_person(client, settings)
    pending = Message.get((Message.content == "START") & (Message.from_number == PERSON))
    hi = Message.get(Message.content == "Hi, I am Ada")
    assert Job.exists(reply_job_id(hi.id), connection=redis_conn)
    assert rows_mentioning(DIGITS)
    queue = job_queue(queue_name(settings), redis_conn)
    theirs = {c.chat_id for c in Chat.select().where(Chat.to_number == PERSON)}
    queued = [j for j in Job.fetch_many(queue.get_job_ids(), redis_conn, JobSerializer)]
    deliveries = [j for j in queued if j.func_name == DELIVER_JOB and j.args[1] in theirs]
    others = [j for j in queued if j.func_name == DELIVER_JOB and j.args[1] not in theirs]
    assert len(deliveries) >= 4 and others
    assert any(DIGITS in json.dumps(job.args) for job in deliveries)  # message_received names them
    # Deliveries in every place one waits: retried later, failed (kept 7 days), finished.
    scheduled, failed, finished = deliveries[:3]
    for job in (scheduled, failed, finished):
        queue.remove(job)
    queue.schedule_job(scheduled, utcnow() + timedelta(minutes=5))
    queue.failed_job_registry.add(failed, ttl=7 * 24 * 3600)
    queue.finished_job_registry.add(finished, ttl=600)
    # The spend guard counted a reply to them, and keeps the counters by a hash of the number.
    spend.admit_reply(settings, default_agent(), PERSON, "erase-test")
    usage = client.get(
        f"/v1/agents/{default_agent().agent_id}/usage?phone_number={quote(PERSON)}", headers=AUTH
    )
    assert usage.get_json()["person"]["replies_this_hour"] == 1
    assert redis_values_mentioning(redis_conn, DIGITS)

    exported = json.loads(cli(settings, "contacts", "export", PERSON).stdout)
    contents = [m["content"] for chat in exported["chats"] for m in chat["messages"]]
    for text in ("Hi, I am Ada", "my cat", "HELP", "STOP", "START"):
        assert text in contents
    assert any(m["media"] for chat in exported["chats"] for m in chat["messages"])
    assert exported["profiles"][0]["profile"] == {"name": "Ada"}
    assert exported["contacts"][0]["phone_number"] == PERSON
    assert [k["key"] for k in exported["idempotency_keys"]] == ["sms-chats:table-ready-1"]
    assert pending.chat_id in {chat["chat_id"] for chat in exported["chats"]}

    output = cli(settings, "contacts", "erase", "--yes", PERSON).stdout
    assert output.startswith("erased: ")
    assert rows_mentioning(DIGITS) == []
    assert not Job.exists(reply_job_id(hi.id), connection=redis_conn)
    for job in deliveries:
        assert not Job.exists(job.id, connection=redis_conn)
    assert redis_values_mentioning(redis_conn, DIGITS) == []
    assert all(Job.exists(job.id, connection=redis_conn) for job in others)
    usage = client.get(
        f"/v1/agents/{default_agent().agent_id}/usage?phone_number={quote(PERSON)}", headers=AUTH
    )
    assert usage.get_json()["person"]["replies_this_hour"] == 0
    # The other person's chat and message are untouched.
    assert Chat.get(Chat.to_number == OTHER_PERSON).messages.count() == 1
    assert rows_mentioning(OTHER_PERSON.lstrip("+"))


def test_erase_of_an_unknown_number_erases_nothing(client, settings):
    """A number nobody stored: zero of everything, and no error."""
    output = cli(settings, "contacts", "erase", "--yes", "+14155550100").stdout
    assert output == (
        "erased: 0 chats, 0 messages, 0 contacts, 0 profiles, 0 idempotency keys, 0 jobs, 0 spend keys\n"
    )


def test_retention_deletes_old_messages_and_emptied_chats(client, settings):
    """Messages older than the retention period go; newer ones and ongoing chats stay."""
    post_twilio(client, "/twilio/sms", inbound_sms("old news"))
    post_twilio(client, "/twilio/sms", inbound_sms("STOP"))
    old_chat = Chat.get(Chat.to_number == PERSON)
    long_ago = utcnow() - timedelta(days=40)
    Message.update(created_at=long_ago).execute()
    Chat.update(end_timestamp=long_ago).where(Chat.chat_id == old_chat.chat_id).execute()
    post_twilio(client, "/twilio/sms", inbound_sms("fresh", From=OTHER_PERSON))

    assert delete_expired(None) == {"messages": 0, "chats": 0, "idempotency_keys": 0}
    counts = delete_expired(30)
    assert counts["messages"] == 2 and counts["chats"] == 1
    assert [m.content for m in Message.select()] == ["fresh"]
    assert Chat.get_or_none(Chat.chat_id == old_chat.chat_id) is None


def test_erase_reads_past_a_job_it_cannot_read(client, settings, redis_conn):
    """A job in the queue whose data is not JSON does not stop the erase (nor is it run or deleted)."""
    queue = job_queue(queue_name(settings), redis_conn)
    redis_conn.hset(f"rq:job:{'f' * 32}", mapping={"data": b"\x80\x04not json", "meta": b"\x80\x04not json"})
    redis_conn.rpush(queue.key, "f" * 32)
    post_twilio(client, "/twilio/sms", inbound_sms("Hi, I am Ada"))
    output = cli(settings, "contacts", "erase", "--yes", PERSON).stdout
    assert output.startswith("erased: 1 chats, 1 messages")
    assert rows_mentioning(DIGITS) == []
    assert redis_conn.exists(f"rq:job:{'f' * 32}")
