"""Number pair -> chat and contact: get or create, race-safely, on the real database."""

from __future__ import annotations

import threading

from gateway.conversations.consent import set_opted_out
from gateway.conversations.sessions import contact_state, sms_session
from gateway.storage.db import database, write_transaction
from gateway.storage.models import Agent, Chat, Contact, PhoneNumber
from tests.payloads import OTHER_PERSON, OUR_NUMBER, PERSON


def open_session(our: str = OUR_NUMBER, theirs: str = PERSON):
    """sms_session in its own write transaction."""
    with write_transaction():
        return sms_session(our, theirs)


def test_first_message_opens_an_sms_chat(app):
    """No ongoing chat: one is opened with the default agent and the pair's numbers."""
    session = open_session()
    assert session.created is True
    chat = Chat.get_by_id(session.chat_id)
    assert chat.chat_type == "sms_chat"
    assert chat.chat_status == "ongoing"
    assert (chat.from_number, chat.to_number, chat.ongoing_pair) == (
        OUR_NUMBER,
        PERSON,
        f"{OUR_NUMBER}|{PERSON}",
    )
    assert chat.agent_id == session.agent_id == "agent_default"


def test_next_message_finds_the_same_chat(app):
    """The ongoing chat is found again, with its agent's settings."""
    first = open_session()
    again = open_session()
    assert again.created is False
    assert again.chat_id == first.chat_id
    agent = Agent.get_by_id(first.agent_id)
    assert (again.retry_attempts, again.retry_delay, again.help_message) == (
        agent.retry_attempts,
        agent.retry_delay,
        agent.help_message,
    )


def test_pairs_are_separate(app):
    """Another person, or another of our numbers, is another chat."""
    ids = {
        open_session().chat_id,
        open_session(theirs=OTHER_PERSON).chat_id,
        open_session(our="+15005550001").chat_id,
    }
    assert len(ids) == 3


def test_number_agent_answers_new_chats(app):
    """A number's inbound agent is the agent of chats opened on it."""
    agent = Agent.create(name="Sales", retry_attempts=5, retry_delay=2.0)
    PhoneNumber.create(phone_number=OUR_NUMBER, inbound_agent=agent)
    session = open_session()
    assert (session.agent_id, session.retry_attempts, session.retry_delay) == (agent.agent_id, 5, 2.0)


def test_ended_chat_gives_way_to_a_new_one(app):
    """After the chat ends (ongoing_pair cleared), the pair opens a new chat."""
    first = open_session()
    Chat.update(chat_status="ended", ongoing_pair=None).where(Chat.chat_id == first.chat_id).execute()
    second = open_session()
    assert second.created is True
    assert second.chat_id != first.chat_id


def test_concurrent_opens_make_one_chat(app):
    """Many threads opening the same pair's chat at once agree on one chat."""
    barrier = threading.Barrier(8)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker():
        try:
            database.connect(reuse_if_open=True)
            barrier.wait()
            with write_transaction():
                results.append(sms_session(OUR_NUMBER, PERSON).chat_id)
                contact_state(OUR_NUMBER, PERSON)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            database.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(results)) == 1
    assert Chat.select().count() == 1
    assert Contact.select().count() == 1


def test_contact_created_once(app):
    """The contact of a pair is created on first contact and found after."""
    with write_transaction():
        first = contact_state(OUR_NUMBER, PERSON)
    with write_transaction():
        again = contact_state(OUR_NUMBER, PERSON)
    assert first.created is True
    assert again.created is False
    assert again.id == first.id
    assert again.opted_out is False


def test_set_opted_out_upserts(app):
    """Opting out creates the contact if needed; opting in clears it; a repeat keeps the time."""
    set_opted_out(OUR_NUMBER, PERSON, True)
    row = Contact.get()
    assert row.opted_out is True
    assert row.opted_out_at is not None
    set_opted_out(OUR_NUMBER, PERSON, True)
    assert Contact.get().opted_out_at == row.opted_out_at
    set_opted_out(OUR_NUMBER, PERSON, False)
    assert Contact.get().opted_out is False
    assert Contact.get().opted_out_at is None
    assert Contact.select().count() == 1


def test_find_inbound_reads_chat_agent_and_contact_at_once(app):
    """The hot path's lookup returns the ongoing chat, its agent's settings and the contact."""
    from gateway.conversations.sessions import find_inbound

    assert find_inbound(OUR_NUMBER, PERSON) == (None, None)
    opened = open_session()
    session, contact = find_inbound(OUR_NUMBER, PERSON)
    assert session is not None
    assert (session.chat_id, session.agent_id, session.created) == (opened.chat_id, opened.agent_id, False)
    assert contact is None  # a chat opened without a contact row (as an outbound chat may be)
    set_opted_out(OUR_NUMBER, PERSON, True)
    _, contact = find_inbound(OUR_NUMBER, PERSON)
    assert contact is not None
    assert contact.opted_out is True
    assert find_inbound(OUR_NUMBER, OTHER_PERSON) == (None, None)


def test_touch_with_pair_only_matches_an_ongoing_chat(app):
    """touch_chat(..., pair) confirms the chat is still ongoing; an ended chat is not touched."""
    from gateway.conversations.sessions import pair_key, touch_chat
    from gateway.storage.models import utcnow

    session = open_session()
    pair = pair_key(OUR_NUMBER, PERSON)
    assert touch_chat(session.chat_id, utcnow(), pair) is True
    Chat.update(chat_status="ended", ongoing_pair=None).execute()
    assert touch_chat(session.chat_id, utcnow(), pair) is False
