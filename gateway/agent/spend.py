"""The spend guard: caps on agent replies per person and on model tokens per day, counted in Redis.

Every web process and worker shares the counters, and each decision is one Lua script, so two
workers racing on the last reply under a cap cannot both get it. The windows are calendar
hours and days in UTC (a count resets on the hour / at midnight UTC).

- Replies per person: `Agent.replies_per_person_per_hour` / `_per_day` (None: the settings'
  SPEND_REPLIES_PER_PERSON_PER_HOUR / _PER_DAY, 30 and 200; 0: no cap). One reply is one model answer,
  however many texts it covers; a retried attempt of the same reply is not counted twice.
- Tokens per day: `Agent.tokens_per_day` (None: SPEND_AGENT_TOKENS_PER_DAY) per agent, and
  SPEND_GATEWAY_TOKENS_PER_DAY for the whole gateway (0: no cap). A model call starts only while
  both budgets have tokens left; its tokens (prompt + completion) are added when it answers, so
  calls already in flight may go past the budget by their own size. Post-chat analysis and memory
  jobs count, and stop when the budget is spent.

Over a cap, `admit_reply` says which (`ReplyState.RATE_LIMITED` / `BUDGET_EXHAUSTED`) and whether
this is the person's first refusal in the window (then they get one notice). With no Redis
configured (or Redis unreachable) nothing is counted and everything is admitted: the guard
never stops a reply by failing itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from gateway.config import Settings
from gateway.queue import redis_for
from gateway.storage.models import Agent, ReplyState, utcnow

log = logging.getLogger(__name__)

# What the person gets over a cap when the agent has no limit_notice_message.
RATE_LIMIT_NOTICE = "You've reached the limit of replies for now. Please text again later."
BUDGET_NOTICE = "Sorry, I can't reply any more today. Please text again tomorrow."
# Counters outlive their window by this much (then Redis drops them).
HOUR_TTL = int(timedelta(hours=2).total_seconds())
DAY_TTL = int(timedelta(days=2).total_seconds())

# KEYS: 1 admitted marker of this reply, 2 person's hour count, 3 person's day count,
#       4 agent's tokens today, 5 gateway's tokens today, 6 hour notice, 7 day notice, 8 budget notice,
#       9 agent's replies today
# ARGV: 1 per hour, 2 per day, 3 agent tokens cap, 4 gateway tokens cap (0: none), 5 hour ttl, 6 day ttl
# Returns {verdict, first refusal in window (1/0)}: "ok", "hour", "day" or "budget".
_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'ok', 0} end
local agent_cap, gateway_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local agent_used = tonumber(redis.call('GET', KEYS[4]) or '0')
local gateway_used = tonumber(redis.call('GET', KEYS[5]) or '0')
if (agent_cap > 0 and agent_used >= agent_cap) or (gateway_cap > 0 and gateway_used >= gateway_cap) then
  local first = redis.call('SET', KEYS[8], '1', 'NX', 'EX', ARGV[6])
  return {'budget', first and 1 or 0}
end
local hour = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) > 0 and hour >= tonumber(ARGV[1]) then
  local first = redis.call('SET', KEYS[6], '1', 'NX', 'EX', ARGV[5])
  return {'hour', first and 1 or 0}
end
local day = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[2]) > 0 and day >= tonumber(ARGV[2]) then
  local first = redis.call('SET', KEYS[7], '1', 'NX', 'EX', ARGV[6])
  return {'day', first and 1 or 0}
end
redis.call('INCR', KEYS[2]); redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('INCR', KEYS[3]); redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('INCR', KEYS[9]); redis.call('EXPIRE', KEYS[9], ARGV[6])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[6])
return {'ok', 0}
"""


@dataclass(frozen=True)
class Caps:
    """The caps that apply to one agent (0: no cap)."""

    replies_per_hour: int
    replies_per_day: int
    agent_tokens_per_day: int
    gateway_tokens_per_day: int


@dataclass(frozen=True)
class Refusal:
    """Why a reply is not made: the reply state to record, a sentence, and whether to send a notice."""

    state: ReplyState
    reason: str
    notify: bool


def caps_for(agent: Agent, settings: Settings) -> Caps:
    """The agent's own caps, with the gateway-wide defaults where it has none."""

    def pick(own: int | None, default: int) -> int:
        return default if own is None else max(own, 0)

    return Caps(
        replies_per_hour=pick(agent.replies_per_person_per_hour, settings.spend_replies_per_person_per_hour),
        replies_per_day=pick(agent.replies_per_person_per_day, settings.spend_replies_per_person_per_day),
        agent_tokens_per_day=pick(agent.tokens_per_day, settings.spend_agent_tokens_per_day),
        gateway_tokens_per_day=max(settings.spend_gateway_tokens_per_day, 0),
    )


def _windows(now: datetime) -> tuple[str, str]:
    """The current hour and day window ids (UTC)."""
    return now.strftime("%Y%m%d%H"), now.strftime("%Y%m%d")


def _key(settings: Settings, *parts: object) -> str:
    """A spend-guard key under the gateway's queue prefix."""
    return ":".join([settings.queue_prefix, "spend", *(str(p) for p in parts)])


def agent_tokens_key(settings: Settings, agent_id: str, day: str) -> str:
    """The key counting an agent's model tokens on `day` (YYYYMMDD)."""
    return _key(settings, "tokens", "agent", agent_id, day)


def gateway_tokens_key(settings: Settings, day: str) -> str:
    """The key counting the whole gateway's model tokens on `day`."""
    return _key(settings, "tokens", "gateway", day)


def _person_key(settings: Settings, agent_id: str, person: str, window: str) -> str:
    """The key counting one person's replies from one agent in one window."""
    return _key(settings, "replies", agent_id, person, window)


def admit_reply(
    settings: Settings, agent: Agent, person: str, reply_id: int | str, *, now: datetime | None = None
) -> Refusal | None:
    """Count one reply to `person` (None: go ahead), or say which cap refuses it.

    `reply_id` names the reply (the newest inbound message it answers): asking again for the same
    reply, as a retried job does, is admitted without counting it twice.
    """
    redis = redis_for(settings)
    if redis is None:
        return None
    caps = caps_for(agent, settings)
    hour, day = _windows(now or utcnow())
    agent_id = agent.agent_id
    keys = [
        _key(settings, "admitted", agent_id, reply_id),
        _person_key(settings, agent_id, person, hour),
        _person_key(settings, agent_id, person, day),
        agent_tokens_key(settings, agent_id, day),
        gateway_tokens_key(settings, day),
        _key(settings, "notice", agent_id, person, hour),
        _key(settings, "notice", agent_id, person, day),
        _key(settings, "notice", "budget", agent_id, person, day),
        _key(settings, "replies", agent_id, day),
    ]
    args = [
        caps.replies_per_hour,
        caps.replies_per_day,
        caps.agent_tokens_per_day,
        caps.gateway_tokens_per_day,
        HOUR_TTL,
        DAY_TTL,
    ]
    try:
        verdict, first = redis.eval(_ADMIT, len(keys), *keys, *args)
    except RedisError as exc:
        log.warning("spend guard: Redis unavailable (%s); reply to %s admitted uncounted", exc, reply_id)
        return None
    verdict = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
    if verdict == "ok":
        return None
    if verdict == "budget":
        reason = "The daily model token budget is spent; no reply until it resets at midnight UTC."
        return Refusal(ReplyState.BUDGET_EXHAUSTED, reason, bool(first))
    cap, window = (caps.replies_per_hour, "hour") if verdict == "hour" else (caps.replies_per_day, "day")
    reason = f"This person reached the agent's cap of {cap} replies per {window}."
    return Refusal(ReplyState.RATE_LIMITED, reason, bool(first))


def budget_refusal(settings: Settings, agent: Agent | None, *, now: datetime | None = None) -> str | None:
    """Why no model call may be made for this agent now (a token budget is spent), or None."""
    redis = redis_for(settings)
    if redis is None:
        return None
    caps = caps_for(agent, settings) if agent is not None else None
    day = _windows(now or utcnow())[1]
    keys = [gateway_tokens_key(settings, day)]
    if agent is not None:
        keys.append(agent_tokens_key(settings, agent.agent_id, day))
    try:
        values = redis.mget(keys)
    except RedisError as exc:
        log.warning("spend guard: Redis unavailable (%s); token budget not checked", exc)
        return None
    gateway_used = int(values[0] or 0)
    gateway_cap = max(settings.spend_gateway_tokens_per_day, 0)
    if gateway_cap and gateway_used >= gateway_cap:
        return f"The gateway's daily budget of {gateway_cap} model tokens is spent."
    if caps is not None and caps.agent_tokens_per_day and int(values[1] or 0) >= caps.agent_tokens_per_day:
        return f"The agent's daily budget of {caps.agent_tokens_per_day} model tokens is spent."
    return None


def record_tokens(
    settings: Settings,
    agent_id: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    *,
    now: datetime | None = None,
) -> None:
    """Add a model call's tokens to today's agent and gateway counters (never raises)."""
    tokens = (prompt_tokens or 0) + (completion_tokens or 0)
    redis = redis_for(settings)
    if redis is None or tokens <= 0:
        return
    day = _windows(now or utcnow())[1]
    try:
        with redis.pipeline(transaction=False) as pipe:
            pipe.incrby(gateway_tokens_key(settings, day), tokens)
            pipe.expire(gateway_tokens_key(settings, day), DAY_TTL)
            if agent_id:
                pipe.incrby(agent_tokens_key(settings, agent_id, day), tokens)
                pipe.expire(agent_tokens_key(settings, agent_id, day), DAY_TTL)
            pipe.execute()
    except RedisError as exc:
        log.warning("spend guard: could not count %d tokens of agent %s: %s", tokens, agent_id, exc)


def notice_text(agent: Agent, refusal: Refusal) -> str | None:
    """The notice the person gets for this refusal: the agent's text, the built-in one, or None (off)."""
    if agent.limit_notice_message is not None:
        return agent.limit_notice_message.strip() or None
    return BUDGET_NOTICE if refusal.state is ReplyState.BUDGET_EXHAUSTED else RATE_LIMIT_NOTICE


def agent_usage(
    settings: Settings, agent: Agent, *, person: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Today's use of one agent's caps (and one person's, when given), as the API shows it."""
    caps = caps_for(agent, settings)
    hour, day = _windows(now or utcnow())
    keys = [agent_tokens_key(settings, agent.agent_id, day), _key(settings, "replies", agent.agent_id, day)]
    if person:
        keys += [
            _person_key(settings, agent.agent_id, person, hour),
            _person_key(settings, agent.agent_id, person, day),
        ]
    values = _read(settings, keys)
    usage: dict[str, Any] = {
        "day": f"{day[:4]}-{day[4:6]}-{day[6:]}",
        "tokens_today": values[0],
        "tokens_per_day": caps.agent_tokens_per_day or None,
        "replies_today": values[1],
        "replies_per_person_per_hour": caps.replies_per_hour or None,
        "replies_per_person_per_day": caps.replies_per_day or None,
    }
    if person:
        usage["person"] = {"phone_number": person, "replies_this_hour": values[2], "replies_today": values[3]}
    return usage


def gateway_usage(settings: Settings, *, now: datetime | None = None) -> dict[str, Any]:
    """Today's use of the gateway-wide token budget."""
    day = _windows(now or utcnow())[1]
    [used] = _read(settings, [gateway_tokens_key(settings, day)])
    cap = max(settings.spend_gateway_tokens_per_day, 0)
    return {"day": f"{day[:4]}-{day[4:6]}-{day[6:]}", "tokens_today": used, "tokens_per_day": cap or None}


def _read(settings: Settings, keys: list[str]) -> list[int]:
    """Integer counters (0 when absent); RedisError propagates to the caller."""
    redis: Redis | None = redis_for(settings)
    if redis is None:
        return [0] * len(keys)
    return [int(v or 0) for v in redis.mget(keys)]
