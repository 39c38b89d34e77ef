"""STOP/START/HELP: the keyword lists, and what each does to a contact and the agent's reply."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gateway.agent.analysis import analysis_job_id
from gateway.conversations.agents import DEFAULT_HELP_MESSAGE
from gateway.queue import fetch_job, reply_job_id
from gateway.storage.models import Agent, Chat, Contact, Message, PhoneNumber
from gateway.twilio.keywords import Keyword, match_keyword
from tests.conftest import post_twilio
from tests.payloads import KEYWORD_CASES, OUR_NUMBER, PERSON, inbound_sms

SMS = "/twilio/sms"


@pytest.mark.parametrize(("word", "meaning"), KEYWORD_CASES)
def test_twilio_default_keywords(word, meaning):
    """Each of Twilio's default words is its keyword, in any case and with whitespace around."""
    assert match_keyword(word) == Keyword(meaning)
    assert match_keyword(word.lower()) == Keyword(meaning)
    assert match_keyword(f"  {word.capitalize()}\n") == Keyword(meaning)


@pytest.mark.parametrize(
    "body",
    ["", None, "stop it", "STOP!", "please stop", "helpful", "yes please", "S T O P", "ARRET", "🛑"],
)
def test_not_keywords(body):
    """Only a body that is exactly a keyword counts."""
    assert match_keyword(body) is None


def test_opt_out_type_wins():
    """Twilio's OptOutType (Advanced Opt-Out) decides, whatever the body says."""
    assert match_keyword("ARRET", "STOP") is Keyword.STOP
    assert match_keyword("hello", "start") is Keyword.START
    assert match_keyword("STOP", "HELP") is Keyword.HELP
    assert match_keyword("STOP", "SOMETHING_NEW") is Keyword.STOP  # unknown verdict: our own match


def contact() -> Contact:
    """The contact of PERSON on OUR_NUMBER."""
    return Contact.get((Contact.our_number == OUR_NUMBER) & (Contact.phone_number == PERSON))


def reply_jobs(redis_conn) -> list[str]:
    """Reply job ids in Redis."""
    ids = (key.decode().removeprefix("rq:job:") for key in redis_conn.scan_iter("rq:job:reply-*"))
    return sorted(job_id for job_id in ids if ":" not in job_id)


def send(client, body: str, **extra: str) -> tuple[int, bytes, Message]:
    """Text `body` from PERSON; (status code, TwiML, recorded message)."""
    form = inbound_sms(body, **extra)
    response = post_twilio(client, SMS, form)
    return response.status_code, response.get_data(), Message.get(Message.twilio_sid == form["MessageSid"])


def test_stop_then_start(client, redis_conn):
    """STOP opts out with no reply (Twilio confirms itself) and ends the chat; texts meanwhile get
    no reply; START opts back in."""
    code, body, stop = send(client, "Stop")
    assert code == 200
    assert list(ET.fromstring(body)) == []  # no <Message>: Twilio sends the opt-out confirmation
    assert stop.reply_state == "none"
    assert contact().opted_out is True
    assert contact().opted_out_at is not None
    assert reply_jobs(redis_conn) == []

    _, body, ignored = send(client, "are you still there?")
    assert list(ET.fromstring(body)) == []
    assert ignored.reply_state == "none"
    assert ignored.content == "are you still there?"
    assert reply_jobs(redis_conn) == []

    _, body, start = send(client, "START")
    assert list(ET.fromstring(body)) == []
    assert start.reply_state == "none"
    assert contact().opted_out is False
    assert reply_jobs(redis_conn) == []

    _, _, back = send(client, "hi again")
    assert back.reply_state == "pending"
    assert reply_jobs(redis_conn) == [reply_job_id(back.id)]
    # STOP ended the conversation (its analysis is queued); later texts are in a new chat.
    stopped = Chat.get_by_id(stop.chat_id)
    assert (stopped.chat_status, stopped.end_reason, stopped.ongoing_pair) == ("ended", "opt_out", None)
    assert {ignored.chat_id, start.chat_id, back.chat_id} == {
        Chat.get(Chat.ongoing_pair.is_null(False)).chat_id
    }
    assert fetch_job(analysis_job_id(stop.chat_id), redis_conn) is not None


def test_opt_out_type_stop_with_a_custom_word(client):
    """A Messaging Service keyword Twilio matched (OptOutType=STOP) opts out too."""
    _, _, message = send(client, "BASTA", OptOutType="STOP")
    assert message.reply_state == "none"
    assert contact().opted_out is True


def test_help_answers_with_the_agents_help_message(client, redis_conn):
    """HELP is answered in TwiML with the agent's help text; no reply job."""
    code, body, message = send(client, "help")
    assert code == 200
    root = ET.fromstring(body)
    assert root.tag == "Response"
    assert [m.text for m in root.findall("Message")] == [DEFAULT_HELP_MESSAGE]
    assert message.reply_state == "none"
    assert reply_jobs(redis_conn) == []
    assert contact().opted_out is False


def test_help_uses_the_numbers_agent(client):
    """The help text is the one of the agent answering this number, escaped as XML needs."""
    agent = Agent.create(
        name="Clinic", help_message="Acme Clinic <front desk> & reminders. Reply STOP to end."
    )
    PhoneNumber.create(phone_number=OUR_NUMBER, inbound_agent=agent)
    _, body, _ = send(client, "INFO")
    assert (
        ET.fromstring(body).find("Message").text == "Acme Clinic <front desk> & reminders. Reply STOP to end."
    )


def test_help_while_opted_out_is_still_answered(client):
    """An opted-out person asking HELP still gets the help text and stays opted out."""
    send(client, "STOP")
    _, body, message = send(client, "HELP")
    assert ET.fromstring(body).find("Message") is not None
    assert message.reply_state == "none"
    assert contact().opted_out is True


def test_repeated_stop_keeps_the_first_time(client):
    """A second STOP does not move the opt-out time."""
    send(client, "STOP")
    first = contact().opted_out_at
    send(client, "UNSUBSCRIBE")
    assert contact().opted_out_at == first
