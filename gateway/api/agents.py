"""Agents: create, list, read, change and delete the models-with-prompts that answer chats."""

from __future__ import annotations

from flask import jsonify
from peewee import IntegrityError

from gateway.api import bp
from gateway.api.errors import conflict, invalid_field, not_found
from gateway.api.serializers import agent_json
from gateway.api.validation import (
    ID_PATTERN,
    Field,
    analysis_fields,
    boolean,
    integer,
    json_body,
    number,
    string,
    validate,
)
from gateway.conversations.agents import DEFAULT_AGENT_ID, default_agent
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, ChatStatus, PhoneNumber, utcnow

MESSAGE_MAX = 10_000

# What PATCH accepts; POST accepts the same plus `agent_id`.
AGENT_FIELDS: dict[str, Field] = {
    "name": Field(string(max_length=200)),
    "model": Field(string(min_length=1, max_length=200, nullable=True)),
    "system_prompt": Field(string(max_length=100_000)),
    "temperature": Field(number(minimum=0, maximum=2, nullable=True)),
    "num_last_messages": Field(integer(minimum=0, maximum=10_000)),
    "full_session_memory": Field(boolean()),
    "summary_memory": Field(boolean()),
    "user_analysis_memory": Field(boolean()),
    "retry_attempts": Field(integer(minimum=0, maximum=10)),
    "retry_delay": Field(number(minimum=0, maximum=3600)),
    "max_concurrent_invocations": Field(integer(minimum=1, maximum=1000)),
    "end_chat_after_silence_ms": Field(integer(minimum=1000)),
    "auto_close_message": Field(string(max_length=MESSAGE_MAX, nullable=True)),
    "help_message": Field(string(max_length=MESSAGE_MAX, nullable=True)),
    "fallback_message": Field(string(max_length=MESSAGE_MAX, nullable=True)),
    "fallback_enabled": Field(boolean()),
    "accepts_images": Field(boolean()),
    "analysis_fields": Field(analysis_fields()),
}
CREATE_FIELDS: dict[str, Field] = {"agent_id": Field(string(pattern=ID_PATTERN)), **AGENT_FIELDS}


def live_agent(agent_id: str) -> Agent | None:
    """The agent with this id unless it was deleted (the default agent is created on first use)."""
    if agent_id == DEFAULT_AGENT_ID:
        return default_agent()
    if not ID_PATTERN.match(agent_id):
        return None
    return Agent.get_or_none((Agent.agent_id == agent_id) & Agent.deleted_at.is_null())


def get_agent_or_404(agent_id: str) -> Agent:
    """The live agent named in the URL, or 404."""
    agent = live_agent(agent_id)
    if agent is None:
        raise not_found("agent", agent_id)
    return agent


def agent_for_field(field: str, agent_id: str | None) -> Agent | None:
    """The live agent a body field names, or a 422 naming that field (None stays None)."""
    if agent_id is None:
        return None
    agent = live_agent(agent_id)
    if agent is None:
        raise invalid_field(field, f"no agent with id {agent_id!r}")
    return agent


@bp.post("/agents")
def create_agent():
    """Create an agent; 201 with it."""
    data = validate(json_body(allow_empty=True), CREATE_FIELDS)
    if data.get("agent_id") == DEFAULT_AGENT_ID:
        default_agent()  # so the id is taken and the request gets its 409
    now = utcnow()
    try:
        with database.atomic():
            agent = Agent.create(**data, created_at=now, updated_at=now)
    except IntegrityError:
        raise conflict(
            "agent_exists", f"agent_id {data.get('agent_id')!r} is taken (possibly by a deleted agent)."
        ) from None
    return jsonify(agent_json(agent)), 201


@bp.get("/agents")
def list_agents():
    """Every live agent, the default agent first, then oldest first."""
    default_agent()
    agents = (
        Agent.select()
        .where(Agent.deleted_at.is_null())
        .order_by(Agent.is_default.desc(), Agent.created_at, Agent.agent_id)
    )
    return jsonify(items=[agent_json(a) for a in agents])


@bp.get("/agents/<agent_id>")
def get_agent(agent_id: str):
    """One agent."""
    return jsonify(agent_json(get_agent_or_404(agent_id)))


@bp.patch("/agents/<agent_id>")
def update_agent(agent_id: str):
    """Change some of an agent's fields; the others keep their values."""
    agent = get_agent_or_404(agent_id)
    data = validate(json_body(allow_empty=True), AGENT_FIELDS, partial=True)
    if data:
        data["updated_at"] = utcnow()
        Agent.update(**data).where(Agent.agent_id == agent.agent_id).execute()
        agent = Agent.get_by_id(agent.agent_id)
    return jsonify(agent_json(agent))


@bp.delete("/agents/<agent_id>")
def delete_agent(agent_id: str):
    """Delete an agent no number and no ongoing chat uses; ended chats keep their history."""
    agent = get_agent_or_404(agent_id)
    if agent.is_default or agent.agent_id == DEFAULT_AGENT_ID:
        raise conflict(
            "agent_is_default", "The default agent answers numbers without one; it can't be deleted."
        )
    numbers = [
        n.phone_number
        for n in PhoneNumber.select(PhoneNumber.phone_number).where(
            (PhoneNumber.inbound_agent == agent.agent_id) | (PhoneNumber.outbound_agent == agent.agent_id)
        )
    ]
    if numbers:
        raise conflict(
            "agent_in_use",
            f"Phone number(s) {', '.join(sorted(numbers))} use this agent; point them at another first.",
        )
    ongoing = (
        Chat.select()
        .where((Chat.agent == agent.agent_id) & (Chat.chat_status == ChatStatus.ONGOING.value))
        .count()
    )
    if ongoing:
        raise conflict("agent_in_use", f"{ongoing} ongoing chat(s) use this agent; end them first.")
    Agent.update(deleted_at=utcnow(), updated_at=utcnow()).where(Agent.agent_id == agent.agent_id).execute()
    return "", 204
