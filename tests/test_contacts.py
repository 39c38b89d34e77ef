"""A person by their number: export everything stored about them, erase it all, retention."""

from __future__ import annotations

import json
from datetime import timedelta

from click.testing import CliRunner
from rq.job import Job

from gateway.cli import main
from gateway.config import settings_to_env
from gateway.conversations.retention import delete_expired
from gateway.queue import reply_job_id
from gateway.storage.db import database
from gateway.storage.models import Chat, Message, PhoneNumber, UserProfile, utcnow
from tests.conftest import GATEWAY_API_KEY, post_twilio
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
    no table holds the number and the queued jobs are gone; the other person keeps theirs."""
    store_a_person(client, settings)
    pending = Message.get((Message.content == "START") & (Message.from_number == PERSON))
    hi = Message.get(Message.content == "Hi, I am Ada")
    assert Job.exists(reply_job_id(hi.id), connection=redis_conn)
    assert rows_mentioning(DIGITS)

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
    # The other person's chat and message are untouched.
    assert Chat.get(Chat.to_number == OTHER_PERSON).messages.count() == 1
    assert rows_mentioning(OTHER_PERSON.lstrip("+"))


def test_erase_of_an_unknown_number_erases_nothing(client, settings):
    """A number nobody stored: zero of everything, and no error."""
    output = cli(settings, "contacts", "erase", "--yes", "+14155550100").stdout
    assert output == "erased: 0 chats, 0 messages, 0 contacts, 0 profiles, 0 idempotency keys, 0 jobs\n"


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
