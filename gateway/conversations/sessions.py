"""Where a number pair becomes a chat: the ongoing SMS chat and the contact of (our number, theirs).

Identity is the database's job: `Chat.ongoing_pair` is unique, and so is (our_number,
phone_number) on `Contact`. Each lookup reads first (one indexed SELECT: the common case) and only
inserts on a miss, inside a savepoint, falling back to the row another request inserted first when
the insert hits the unique index. Call these inside `write_transaction()`. Ending a chat and
opting a person out or in live in gateway/conversations/lifecycle.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from peewee import JOIN, IntegrityError

from gateway.conversations.agents import inbound_agent_for
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, ChatType, Contact, new_id, utcnow
from gateway.twilio.channels import channel_of


@dataclass(frozen=True)
class SmsSession:
    """The ongoing SMS chat of a number pair, with what the webhook needs of its agent."""

    chat_id: str
    agent_id: str
    retry_attempts: int
    retry_delay: float
    help_message: str | None
    created: bool  # True when this call opened the chat


@dataclass(frozen=True)
class ContactState:
    """A person's contact row for one of our numbers: its id and opt-out flag."""

    id: int
    opted_out: bool
    created: bool


def pair_key(our_number: str, their_number: str) -> str:
    """The `Chat.ongoing_pair` value of a number pair."""
    return f"{our_number}|{their_number}"


_SESSION_COLUMNS = (
    Chat.chat_id,
    Agent.agent_id,
    Agent.retry_attempts,
    Agent.retry_delay,
    Agent.help_message,
)


def _find_session(pair: str) -> SmsSession | None:
    """The ongoing chat of `pair` joined with its agent's settings, in one SELECT."""
    row = (
        Chat.select(*_SESSION_COLUMNS)
        .join(Agent, on=(Chat.agent == Agent.agent_id))
        .where(Chat.ongoing_pair == pair)
        .tuples()
        .first()
    )
    return SmsSession(*row, created=False) if row else None


def sms_session(our_number: str, their_number: str, now: datetime | None = None) -> SmsSession:
    """The ongoing SMS chat between our number and theirs, opened (race-safely) if there is none.

    A new chat is answered by `inbound_agent_for(our_number)`. Two first messages arriving at
    once open one chat: the loser of the insert race reads the winner's chat.
    """
    pair = pair_key(our_number, their_number)
    found = _find_session(pair)
    if found is not None:
        return found
    agent = inbound_agent_for(our_number)
    now = now or utcnow()
    chat_id = new_id("chat")
    try:
        with database.atomic():  # a savepoint: a failed insert leaves the outer transaction usable
            Chat.insert(
                chat_id=chat_id,
                agent=agent.agent_id,
                chat_type=ChatType.SMS.value,
                channel=channel_of(our_number).value,
                from_number=our_number,
                to_number=their_number,
                ongoing_pair=pair,
                start_timestamp=now,
                last_activity_at=now,
            ).execute()
    except IntegrityError:
        found = _find_session(pair)
        if found is None:  # the unique index refused us for another reason: let it be seen
            raise
        return found
    return SmsSession(
        chat_id=chat_id,
        agent_id=agent.agent_id,
        retry_attempts=agent.retry_attempts,
        retry_delay=agent.retry_delay,
        help_message=agent.help_message,
        created=True,
    )


def touch_chat(chat_id: str, now: datetime, pair: str | None = None) -> bool:
    """Record activity in a chat now (silence timers count from here); with `pair`, only while
    the chat is still the pair's ongoing one. True when the chat was updated."""
    query = Chat.update(last_activity_at=now).where(Chat.chat_id == chat_id)
    if pair is not None:
        query = query.where(Chat.ongoing_pair == pair)
    return query.execute() > 0


# The hot path's one read: the pair's ongoing chat, its agent's settings and the person's contact.
# Its SQL is rendered once per database kind (peewee's query building costs more than running it).
_PAIR_MARK = "\x00pair"
_inbound_sql: dict[type, str] = {}


def _inbound_query(pair: str):
    """SELECT chat, agent settings and contact of a pair's ongoing chat (at most one row)."""
    return (
        Chat.select(*_SESSION_COLUMNS, Contact.id, Contact.opted_out)
        .join(Agent, on=(Chat.agent == Agent.agent_id))
        .switch(Chat)
        .join(
            Contact,
            JOIN.LEFT_OUTER,
            on=((Contact.our_number == Chat.from_number) & (Contact.phone_number == Chat.to_number)),
        )
        .where(Chat.ongoing_pair == pair)
    )


def _rendered_inbound_sql() -> str:
    """The SQL of `_inbound_query` for the current database, its one parameter being the pair."""
    kind = type(database.obj)
    sql = _inbound_sql.get(kind)
    if sql is None:
        sql, params = _inbound_query(_PAIR_MARK).sql()
        if list(params) != [_PAIR_MARK]:
            raise RuntimeError(f"unexpected parameters in the inbound lookup: {params!r}")
        _inbound_sql[kind] = sql
    return sql


def find_inbound(our_number: str, their_number: str) -> tuple[SmsSession | None, ContactState | None]:
    """The pair's ongoing chat (with its agent's settings) and the person's contact, in one SELECT.

    Either may be None: no ongoing chat, or a chat opened without a contact (outbound). Runs
    outside the write transaction: the writer confirms the chat is still ongoing with
    `touch_chat(chat_id, now, pair)` and falls back to `sms_session` when it is not.
    """
    row = database.execute_sql(_rendered_inbound_sql(), (pair_key(our_number, their_number),)).fetchone()
    if row is None:
        return None, None
    session = SmsSession(*row[:5], created=False)
    contact = None if row[5] is None else ContactState(id=row[5], opted_out=bool(row[6]), created=False)
    return session, contact


def _find_contact(our_number: str, their_number: str) -> tuple[int, bool] | None:
    """(id, opted_out) of the contact row, or None."""
    return (
        Contact.select(Contact.id, Contact.opted_out)
        .where((Contact.our_number == our_number) & (Contact.phone_number == their_number))
        .tuples()
        .first()
    )


def contact_state(our_number: str, their_number: str) -> ContactState:
    """The contact row of a person texting our number, created race-safely on first contact."""
    row = _find_contact(our_number, their_number)
    if row is not None:
        return ContactState(id=row[0], opted_out=bool(row[1]), created=False)
    try:
        with database.atomic():
            contact_id = Contact.insert(our_number=our_number, phone_number=their_number).execute()
    except IntegrityError:
        row = _find_contact(our_number, their_number)
        if row is None:
            raise
        return ContactState(id=row[0], opted_out=bool(row[1]), created=False)
    return ContactState(id=contact_id, opted_out=False, created=True)
