"""Usage against the spend caps: per agent (and per person), and for the whole gateway."""

from __future__ import annotations

from flask import current_app
from redis.exceptions import RedisError

from gateway.agent import spend
from gateway.api.agents import AGENT_ID, get_agent_or_404
from gateway.api.contract import operation
from gateway.api.errors import ApiError
from gateway.api.schemas import AgentUsage, AgentUsageQuery, GatewayUsage

UNAVAILABLE = {503: "Redis, which holds the counters, is unreachable (`unavailable`)."}


def _unavailable(exc: RedisError) -> ApiError:
    """503: the counters cannot be read."""
    return ApiError(503, "unavailable", f"The usage counters cannot be read: Redis is unreachable ({exc}).")


@operation(
    "GET",
    "/agents/<agent_id>/usage",
    operation_id="getAgentUsage",
    tag="agents",
    summary="Today's use of an agent's spend caps",
    query=AgentUsageQuery,
    ok=(200, AgentUsage, "Tokens and replies today (UTC) against the agent's caps."),
    errors=UNAVAILABLE,
    path_params=AGENT_ID,
)
def get_agent_usage(agent_id: str, query: AgentUsageQuery) -> AgentUsage:
    """Tokens and replies today against the agent's caps; with a phone number, that person's counts."""
    agent = get_agent_or_404(agent_id)
    try:
        usage = spend.agent_usage(current_app.config["SETTINGS"], agent, person=query.phone_number)
    except RedisError as exc:
        raise _unavailable(exc) from None
    return AgentUsage.model_validate({"agent_id": agent.agent_id, "person": None, **usage})


@operation(
    "GET",
    "/usage",
    operation_id="getGatewayUsage",
    tag="agents",
    summary="Today's use of the gateway's token budget",
    ok=(200, GatewayUsage, "Tokens today (UTC) against the gateway-wide budget."),
    errors=UNAVAILABLE,
)
def get_gateway_usage() -> GatewayUsage:
    """Tokens today against SPEND_GATEWAY_TOKENS_PER_DAY."""
    try:
        return GatewayUsage.model_validate(spend.gateway_usage(current_app.config["SETTINGS"]))
    except RedisError as exc:
        raise _unavailable(exc) from None
