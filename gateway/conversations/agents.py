"""Which agent answers: a number's own agent, or the default agent a fresh install answers with."""

from __future__ import annotations

from peewee import IntegrityError

from gateway.storage.db import database
from gateway.storage.models import Agent, PhoneNumber
from gateway.twilio.channels import bare_number

DEFAULT_AGENT_ID = "agent_default"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant answering text messages (SMS). Reply in plain text without "
    "markdown, briefly and warmly, in the language the person writes in. Keep answers short "
    "enough to read on a phone; ask one clear question when you need more information."
)
DEFAULT_HELP_MESSAGE = (
    "You are chatting with an automated assistant. Reply STOP to opt out, START to opt back in."
)


def default_agent() -> Agent:
    """The default agent, created race-safely on first use."""
    agent = Agent.get_or_none(Agent.agent_id == DEFAULT_AGENT_ID)
    if agent is not None:
        return agent
    try:
        with database.atomic():
            return Agent.create(
                agent_id=DEFAULT_AGENT_ID,
                name="Default agent",
                system_prompt=DEFAULT_SYSTEM_PROMPT,
                help_message=DEFAULT_HELP_MESSAGE,
                is_default=True,
            )
    except IntegrityError:  # another process created it first
        return Agent.get(Agent.agent_id == DEFAULT_AGENT_ID)


def inbound_agent_for(our_number: str) -> Agent:
    """The agent that answers texts to `our_number` (a `whatsapp:` address: its number's agent)."""
    number = PhoneNumber.get_or_none(PhoneNumber.phone_number == bare_number(our_number))
    if number is not None and number.inbound_agent_id:
        return number.inbound_agent
    return default_agent()


def outbound_agent_for(our_number: str) -> Agent:
    """The agent that starts conversations from `our_number` (or its `whatsapp:` address)."""
    number = PhoneNumber.get_or_none(PhoneNumber.phone_number == bare_number(our_number))
    if number is not None and number.outbound_agent_id:
        return number.outbound_agent
    if number is not None and number.inbound_agent_id:
        return number.inbound_agent
    return default_agent()
