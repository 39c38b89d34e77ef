"""Agents: create, list, read, change and delete the models-with-prompts that answer chats."""

from __future__ import annotations

from typing import Any

from flask import current_app
from peewee import IntegrityError

from gateway.api.contract import PathParam, operation
from gateway.api.errors import conflict, invalid_field, not_found
from gateway.api.schemas import ID_PATTERN, AgentCreate, AgentList, AgentUpdate, is_id
from gateway.api.schemas import Agent as AgentOut
from gateway.api.serializers import agent_out
from gateway.conversations.agents import DEFAULT_AGENT_ID, default_agent
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, ChatStatus, PhoneNumber, utcnow


def live_agent(agent_id: str) -> Agent | None:
    """The agent with this id unless it was deleted (the default agent is created on first use)."""
    if agent_id == DEFAULT_AGENT_ID:
        return default_agent()
    if not is_id(agent_id):
        return None
    return Agent.get_or_none((Agent.agent_id == agent_id) & Agent.deleted_at.is_null())


def get_agent_or_404(agent_id: str) -> Agent:
    """The live agent named in the URL, or 404."""
    agent = live_agent(agent_id)
    if agent is None:
        raise not_found("agent", agent_id)
    return agent


AGENT_ID = {
    "agent_id": PathParam({"type": "string", "pattern": ID_PATTERN}, "The agent's id.", get_agent_or_404)
}


def agent_for_field(field: str, agent_id: str | None) -> Agent | None:
    """The live agent a body field names, or a 422 naming that field (None stays None)."""
    if agent_id is None:
        return None
    agent = live_agent(agent_id)
    if agent is None:
        raise invalid_field(field, f"no agent with id {agent_id!r}")
    return agent


SECRET_REQUIRED = (
    "is required while the agent has a webhook_url or a function tool and the gateway has no "
    "EVENTS_WEBHOOK_SECRET: every event delivery and tool call is signed"
)


def require_signing_secret(webhook_url: str | None, webhook_secret: str | None, tools: list[Any]) -> None:
    """422 naming `webhook_secret` when the agent would send something (events to its own URL, tool
    calls) with no secret to sign it: neither its own nor EVENTS_WEBHOOK_SECRET."""
    if webhook_secret or current_app.config["SETTINGS"].events_webhook_secret:
        return
    if webhook_url or any(tool.get("type") == "function" for tool in tools or []):
        raise invalid_field("webhook_secret", SECRET_REQUIRED)


@operation(
    "POST",
    "/agents",
    operation_id="createAgent",
    tag="agents",
    summary="Create an agent",
    body=AgentCreate,
    ok=(201, AgentOut, "The new agent."),
    errors={409: "`agent_id` is taken (`agent_exists`), possibly by a deleted agent."},
)
def create_agent(body: AgentCreate) -> AgentOut:
    """Create an agent; 201 with it."""
    data = body.model_dump(exclude_none=False)
    require_signing_secret(data["webhook_url"], data["webhook_secret"], data["tools"])
    if data["agent_id"] is None:
        del data["agent_id"]  # the column's default makes one
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
    return agent_out(agent)


@operation(
    "GET",
    "/agents",
    operation_id="listAgents",
    tag="agents",
    summary="List agents (the default agent first)",
    ok=(200, AgentList, "Every agent."),
)
def list_agents() -> AgentList:
    """Every live agent, the default agent first, then oldest first."""
    default_agent()
    agents = (
        Agent.select()
        .where(Agent.deleted_at.is_null())
        .order_by(Agent.is_default.desc(), Agent.created_at, Agent.agent_id)
    )
    return AgentList(items=[agent_out(a) for a in agents])


@operation(
    "GET",
    "/agents/<agent_id>",
    operation_id="getAgent",
    tag="agents",
    summary="Get an agent",
    ok=(200, AgentOut, "The agent."),
    path_params=AGENT_ID,
)
def get_agent(agent_id: str) -> AgentOut:
    """One agent."""
    return agent_out(get_agent_or_404(agent_id))


@operation(
    "PATCH",
    "/agents/<agent_id>",
    operation_id="updateAgent",
    tag="agents",
    summary="Change some of an agent's fields",
    body=AgentUpdate,
    ok=(200, AgentOut, "The agent."),
    path_params=AGENT_ID,
)
def update_agent(agent_id: str, body: AgentUpdate) -> AgentOut:
    """Change the fields sent; the others keep their values."""
    agent = get_agent_or_404(agent_id)
    data = body.model_dump(include=body.model_fields_set)
    if data.keys() & {"webhook_url", "webhook_secret", "tools"}:  # the agent as it would be saved
        require_signing_secret(
            data.get("webhook_url", agent.webhook_url),
            data.get("webhook_secret", agent.webhook_secret),
            data.get("tools", agent.tools),
        )
    if data:
        data["updated_at"] = utcnow()
        changed = (
            Agent.update(**data)
            .where((Agent.agent_id == agent.agent_id) & Agent.deleted_at.is_null())
            .execute()
        )
        if not changed:  # deleted meanwhile
            raise not_found("agent", agent_id)
        agent = Agent.get_by_id(agent.agent_id)
    return agent_out(agent)


@operation(
    "DELETE",
    "/agents/<agent_id>",
    operation_id="deleteAgent",
    tag="agents",
    summary="Delete an agent",
    description="Refused (409) for the default agent (`agent_is_default`) and while a phone number or an "
    "ongoing chat uses the agent (`agent_in_use`). Ended chats keep the agent's id.",
    ok=(204, None, "Deleted."),
    errors={409: "The default agent, or an agent in use."},
    path_params=AGENT_ID,
)
def delete_agent(agent_id: str) -> None:
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
    return None
