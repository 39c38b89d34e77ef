"""The spend guard: caps on agent replies per person and on model tokens per day, counted in Redis.

Every web process and worker shares the counters, and each decision is one Lua script, so two
workers racing on the last reply under a cap cannot both get it. The windows are calendar
hours and days in UTC (a count resets on the hour / at midnight UTC).

- Replies per person: `Agent.replies_per_person_per_hour` / `_per_day` (None: the settings'
  SPEND_REPLIES_PER_PERSON_PER_HOUR / _PER_DAY, 30 and 200; 0: no cap). One reply is one model answer,
  however many texts it covers; a retried attempt of the same reply is not counted twice.
- Tokens per day: `Agent.tokens_per_day` (None: SPEND_AGENT_TOKENS_PER_DAY) per agent, and
  SPEND_GATEWAY_TOKENS_PER_DAY for the whole gateway (0: no cap). Every model call first reserves
  its estimated size (`estimate_tokens`: the prompt's text at one token per 3 bytes, 4 a message,
  1,500 an image, the tools offered, plus the call's max_tokens) against both budgets, in one Lua
  script that refuses when used + reserved + this estimate would pass a cap. When the model
  answers the reservation is replaced by the tokens it reports (`Reservation.settle`); when it
  fails the reservation is released. So calls in flight together can never pass a budget, except
  by what a call uses beyond its estimate (a prompt denser than 3 bytes a token). A worker that
  dies mid-call leaves its reservation held until the day's keys expire (DAY_TTL): the budget of
  that day is then smaller by it, never larger. Replies, API completions, openings, every tool
  round, and the summary, profile and analysis calls all reserve.

Over a cap, `admit_reply` says which (`ReplyState.RATE_LIMITED` / `BUDGET_EXHAUSTED`) and whether
this is the person's first refusal in the window (then they get one notice). With no Redis
configured (or Redis unreachable) nothing is counted and everything is admitted: the guard
never stops a reply by failing itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.exceptions import RedisError

from gateway.config import Settings
from gateway.queue import redis_for
from gateway.storage.models import Agent, ReplyState, utcnow

if TYPE_CHECKING:
    from gateway.agent.llm import Completion

log = logging.getLogger(__name__)

# What the person gets over a cap when the agent has no limit_notice_message.
RATE_LIMIT_NOTICE = "You've reached the limit of replies for now. Please text again later."
BUDGET_NOTICE = "Sorry, I can't reply any more today. Please text again tomorrow."
# Counters outlive their window by this much (then Redis drops them).
HOUR_TTL = int(timedelta(hours=2).total_seconds())
DAY_TTL = int(timedelta(days=2).total_seconds())

# A person's counters and notice markers are keyed by a hash of their number (`person_hash`), so
# Redis never holds the number itself; erasing the person deletes them (`forget_person`).
# KEYS: 1 admitted marker of this reply, 2 person's hour count, 3 person's day count,
#       4 agent's tokens today, 5 gateway's tokens today, 6 hour notice, 7 day notice, 8 budget notice,
#       9 agent's replies today, 10 agent's tokens reserved today, 11 gateway's tokens reserved today
# ARGV: 1 per hour, 2 per day, 3 agent tokens cap, 4 gateway tokens cap (0: none), 5 hour ttl, 6 day ttl,
#       7 the least a model call of this agent reserves (its max_tokens): a budget with less left
#       than that (used + reserved) refuses at once
# Returns {verdict, first refusal in window (1/0)}: "ok", "hour", "day" or "budget".
_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'ok', 0} end
local agent_cap, gateway_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local function num(key) return tonumber(redis.call('GET', key) or '0') end
local agent_used = num(KEYS[4]) + num(KEYS[10])
local gateway_used = num(KEYS[5]) + num(KEYS[11])
local need = math.max(tonumber(ARGV[7]), 1)
if (agent_cap > 0 and agent_used + need > agent_cap)
    or (gateway_cap > 0 and gateway_used + need > gateway_cap) then
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

# KEYS: 1 agent's tokens today, 2 agent's tokens reserved today, 3 gateway's tokens today,
#       4 gateway's tokens reserved today (keys 1-2 absent: no agent)
# ARGV: 1 tokens to reserve, 2 agent cap, 3 gateway cap (0: none), 4 day ttl
# Returns "ok" (reserved), "agent" or "gateway" (that budget cannot hold it: nothing reserved).
_RESERVE = """
local want = tonumber(ARGV[1])
local n = #KEYS
local function held(used, reserved)
  return tonumber(redis.call('GET', used) or '0') + tonumber(redis.call('GET', reserved) or '0')
end
local gateway_cap = tonumber(ARGV[3])
if gateway_cap > 0 and held(KEYS[n - 1], KEYS[n]) + want > gateway_cap then return 'gateway' end
if n == 4 then
  local agent_cap = tonumber(ARGV[2])
  if agent_cap > 0 and held(KEYS[1], KEYS[2]) + want > agent_cap then return 'agent' end
end
for i = 2, n, 2 do
  redis.call('INCRBY', KEYS[i], want); redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return 'ok'
"""

# KEYS: as _RESERVE. ARGV: 1 tokens reserved, 2 tokens used (0 on failure), 3 day ttl.
# Takes the reservation back and adds what was used; a key that expired meanwhile is left alone
# (its day is over).
_SETTLE = """
for i = 2, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local left = redis.call('DECRBY', KEYS[i], ARGV[1])
    if left <= 0 then redis.call('DEL', KEYS[i]) end
  end
  if tonumber(ARGV[2]) > 0 then
    redis.call('INCRBY', KEYS[i - 1], ARGV[2]); redis.call('EXPIRE', KEYS[i - 1], ARGV[3])
  end
end
return 'ok'
"""

# How a call's size is estimated before it is made (see the module doc).
BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 4
TOKENS_PER_IMAGE = 1500


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


def agent_reserved_key(settings: Settings, agent_id: str, day: str) -> str:
    """The key holding the tokens reserved by an agent's model calls in flight on `day`."""
    return _key(settings, "reserved", "agent", agent_id, day)


def gateway_reserved_key(settings: Settings, day: str) -> str:
    """The key holding the tokens reserved by every model call in flight on `day`."""
    return _key(settings, "reserved", "gateway", day)


def person_hash(person: str) -> str:
    """What a person's spend-guard keys are named by: a hash of their number, never the number."""
    return hashlib.sha256(f"smsgw-spend\n{person.strip()}".encode()).hexdigest()[:32]


def _person_prefix(settings: Settings, person: str) -> str:
    """The prefix of every spend-guard key of one person."""
    return _key(settings, "person", person_hash(person))


def _person_key(settings: Settings, agent_id: str, person: str, window: str) -> str:
    """The key counting one person's replies from one agent in one window."""
    return f"{_person_prefix(settings, person)}:replies:{agent_id}:{window}"


def _notice_key(settings: Settings, person: str, *parts: object) -> str:
    """The marker that one person had their notice in one window."""
    return ":".join([_person_prefix(settings, person), "notice", *(str(p) for p in parts)])


def forget_person(settings: Settings, person: str) -> int:
    """Delete every spend-guard key of this person (their counts and notice markers); how many.

    Raises RedisError when Redis is unreachable (the caller decides); nothing to do without Redis.
    """
    redis = redis_for(settings)
    if redis is None:
        return 0
    keys = list(redis.scan_iter(match=f"{_person_prefix(settings, person)}:*", count=500))
    return int(redis.delete(*keys)) if keys else 0


def _reply_count_keys(
    settings: Settings, agent_id: str, person: str, reply_id: int | str, hour: str, day: str
) -> list[str]:
    """The keys that count one reply: its "admitted" mark and the person's hour and day counters."""
    return [
        _key(settings, "admitted", agent_id, reply_id),
        _person_key(settings, agent_id, person, hour),
        _person_key(settings, agent_id, person, day),
    ]


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
        *_reply_count_keys(settings, agent_id, person, reply_id, hour, day),
        agent_tokens_key(settings, agent_id, day),
        gateway_tokens_key(settings, day),
        _notice_key(settings, person, agent_id, hour),
        _notice_key(settings, person, agent_id, day),
        _notice_key(settings, person, "budget", agent_id, day),
        _key(settings, "replies", agent_id, day),
        agent_reserved_key(settings, agent_id, day),
        gateway_reserved_key(settings, day),
    ]
    args = [
        caps.replies_per_hour,
        caps.replies_per_day,
        caps.agent_tokens_per_day,
        caps.gateway_tokens_per_day,
        HOUR_TTL,
        DAY_TTL,
        max(agent.max_tokens or 0, 0),
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


# KEYS: as _ADMIT's 1-3 and 9. Takes back one admitted reply that was then not made.
_UNADMIT = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
for i = 2, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
return 1
"""


def unadmit_reply(
    settings: Settings, agent: Agent, person: str, reply_id: int | str, *, now: datetime | None = None
) -> None:
    """Take back `admit_reply`'s count of a reply that was not made after all (its model call was
    refused for the budget), so the person's reply caps count only replies made (never raises)."""
    redis = redis_for(settings)
    if redis is None:
        return
    hour, day = _windows(now or utcnow())
    keys = [
        *_reply_count_keys(settings, agent.agent_id, person, reply_id, hour, day),
        _key(settings, "replies", agent.agent_id, day),
    ]
    try:
        redis.eval(_UNADMIT, len(keys), *keys)
    except RedisError as exc:
        log.warning("spend guard: could not take back the count of reply %s: %s", reply_id, exc)


def budget_refusal(
    settings: Settings, agent: Agent | None, *, need: int = 0, now: datetime | None = None
) -> str | None:
    """Why no model call may be made for this agent now, or None: a budget has less than `need`
    tokens (at least 1) left, counting the tokens used and those reserved by calls in flight."""
    redis = redis_for(settings)
    if redis is None:
        return None
    caps = caps_for(agent, settings) if agent is not None else None
    day = _windows(now or utcnow())[1]
    keys = [gateway_tokens_key(settings, day), gateway_reserved_key(settings, day)]
    if agent is not None:
        keys += [
            agent_tokens_key(settings, agent.agent_id, day),
            agent_reserved_key(settings, agent.agent_id, day),
        ]
    try:
        values = [int(v or 0) for v in redis.mget(keys)]
    except RedisError as exc:
        log.warning("spend guard: Redis unavailable (%s); token budget not checked", exc)
        return None
    gateway_cap = max(settings.spend_gateway_tokens_per_day, 0)
    need = max(need, 1)
    if gateway_cap and values[0] + values[1] + need > gateway_cap:
        return f"The gateway's daily budget of {gateway_cap} model tokens is spent."
    agent_cap = caps.agent_tokens_per_day if caps is not None else 0
    if agent_cap and values[2] + values[3] + need > agent_cap:
        return f"The agent's daily budget of {agent_cap} model tokens is spent."
    return None


class OverBudget(Exception):
    """A model call's reservation does not fit in a daily token budget: the call is not made."""

    def __init__(self, reason: str) -> None:
        """Keep the sentence saying which budget."""
        super().__init__(reason)
        self.reason = reason


def _text_tokens(text: str) -> int:
    """The estimated tokens of a text: one per BYTES_PER_TOKEN bytes of UTF-8, rounded up."""
    return -(-len(text.encode("utf-8", "replace")) // BYTES_PER_TOKEN)


def estimate_tokens(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, max_tokens: int | None = None
) -> int:
    """The tokens a model call may use at most, as reserved before it is made (see the module doc).

    Text counts one token per 3 bytes (English averages about 4 characters a token), each message
    4, each image 1,500 (its data URL is not text the model reads), the tools offered as their JSON,
    and the answer its `max_tokens`.
    """
    total = _text_tokens(json.dumps(tools, ensure_ascii=False)) if tools else 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += _text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    total += _text_tokens(str(part.get("text") or ""))
                elif part.get("type") == "image_url":
                    total += TOKENS_PER_IMAGE
                else:
                    total += _text_tokens(json.dumps(part, ensure_ascii=False))
        if message.get("tool_calls"):
            total += _text_tokens(json.dumps(message["tool_calls"], ensure_ascii=False))
    return total + max(max_tokens or 0, 0)


@dataclass
class Reservation:
    """Tokens held against the day's budgets for one model call in flight (keys empty: nothing held)."""

    settings: Settings
    tokens: int
    keys: list[str] = field(default_factory=list)
    done: bool = False

    def settle(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """The call answered: replace the reservation with the tokens it used (never raises)."""
        self._close((prompt_tokens or 0) + (completion_tokens or 0))

    def release(self) -> None:
        """The call failed: give the reservation back (never raises)."""
        self._close(0)

    def spend_on(self, call: Callable[[], Completion]) -> Completion:
        """Make the model call `call` under this reservation: its reported tokens replace the
        reservation, a failure (any exception) releases it and is raised."""
        try:
            completion = call()
        except BaseException:
            self.release()
            raise
        self.settle(completion.prompt_tokens, completion.completion_tokens)
        return completion

    def _close(self, used: int) -> None:
        if self.done:
            return
        self.done = True
        redis = redis_for(self.settings)
        if redis is None or not self.keys:
            return
        try:
            redis.eval(_SETTLE, len(self.keys), *self.keys, self.tokens, max(used, 0), DAY_TTL)
        except RedisError as exc:
            # The reservation stays held until the day's key expires: the budget errs on the safe side.
            log.warning("spend guard: could not settle a reservation of %d tokens: %s", self.tokens, exc)


def reserve(
    settings: Settings, agent: Agent | None, tokens: int, *, now: datetime | None = None
) -> Reservation:
    """Hold `tokens` against today's agent and gateway budgets for one model call, atomically.

    Raises OverBudget when used + reserved + `tokens` would pass either cap (nothing is held then).
    With no Redis (or Redis unreachable) nothing is held and the call goes ahead.
    """
    tokens = max(int(tokens), 0)
    redis = redis_for(settings)
    if redis is None:
        return Reservation(settings, tokens)
    day = _windows(now or utcnow())[1]
    caps = caps_for(agent, settings) if agent is not None else None
    keys: list[str] = []
    if agent is not None:
        keys += [
            agent_tokens_key(settings, agent.agent_id, day),
            agent_reserved_key(settings, agent.agent_id, day),
        ]
    keys += [gateway_tokens_key(settings, day), gateway_reserved_key(settings, day)]
    agent_cap = caps.agent_tokens_per_day if caps is not None else 0
    gateway_cap = max(settings.spend_gateway_tokens_per_day, 0)
    try:
        verdict = redis.eval(_RESERVE, len(keys), *keys, tokens, agent_cap, gateway_cap, DAY_TTL)
    except RedisError as exc:
        log.warning(
            "spend guard: Redis unavailable (%s); a model call of ~%d tokens goes uncounted", exc, tokens
        )
        return Reservation(settings, tokens)
    verdict = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
    if verdict == "gateway":
        raise OverBudget(
            f"The gateway's daily budget of {gateway_cap} model tokens is spent (or held by calls in "
            f"flight): a call of up to {tokens} tokens would pass it."
        )
    if verdict == "agent":
        raise OverBudget(
            f"The agent's daily budget of {agent_cap} model tokens is spent (or held by calls in "
            f"flight): a call of up to {tokens} tokens would pass it."
        )
    return Reservation(settings, tokens, keys)


def budget_notice_due(settings: Settings, agent: Agent, person: str, *, now: datetime | None = None) -> bool:
    """True the first time today this person is refused for the budget (then they get one notice)."""
    redis = redis_for(settings)
    if redis is None:
        return False
    day = _windows(now or utcnow())[1]
    try:
        return bool(
            redis.set(_notice_key(settings, person, "budget", agent.agent_id, day), "1", nx=True, ex=DAY_TTL)
        )
    except RedisError as exc:
        log.warning("spend guard: Redis unavailable (%s); no budget notice", exc)
        return False


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
