"""Chat event webhooks: what happened in a chat, POSTed signed to the business's URL by RQ jobs.

Events: `chat_started`, `chat_ended`, `chat_analyzed`, `chat_handoff` (the default set), and on request
`message_received` and `message_status`. An agent's `webhook_url` (else EVENTS_WEBHOOK_URL)
receives the events in its `webhook_events` (else the default set) as

    {"event": "chat_ended", "occurred_at": "2026-...Z", "chat": {...}, "message": {...}}

(`message` only on the message events). `chat` is the chat as it is when the delivery is made.
Each delivery is signed with the endpoint's secret (the agent's `webhook_secret`, else
EVENTS_WEBHOOK_SECRET):

    X-Smsgw-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">

Nothing goes out unsigned: the API refuses an agent with a `webhook_url` or a function tool and no
secret to sign with (gateway/api/agents.py), settings refuse EVENTS_WEBHOOK_URL without
EVENTS_WEBHOOK_SECRET, and a delivery or tool call that still finds no secret (a row stored before
the rule, settings changed since) is not sent but recorded as refused.

`emit()` only reads the agent's webhook settings and queues a job, and never raises: a slow or
dead receiver never delays a reply. Deliveries share the reply queue, but at most
`delivery_concurrency(settings)` (a quarter of WORKER_CONCURRENCY) are queued or running at once
(RQ's RateLimit on one key per gateway, `<SMSGW_QUEUE_PREFIX>:event-deliveries`); the rest wait in
RQ's rate-limited set, oldest first. So a dead receiver under a flood of message_status events
holds at most that many worker threads and leaves the others to replies. The job
(`workers.event_jobs.deliver_event`) posts through gateway/safe_http.py (no private addresses
unless ALLOW_PRIVATE_URLS=1, DNS resolved once, the whole POST within DELIVERY_TIMEOUT, answer
capped), retries a network error, timeout, 408, 429 or 5xx with backoff (DELIVERY_RETRY_INTERVALS,
bounded; the last failure is recorded as `gave_up`), and records every attempt in Redis: the
newest ATTEMPTS_KEPT per endpoint are served by GET /v1/agents/{agent_id}/webhook-deliveries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.rate_limit import RateLimit

from gateway.config import Settings
from gateway.storage.models import Agent, Chat, utcnow

log = logging.getLogger(__name__)

CHAT_STARTED = "chat_started"
CHAT_ENDED = "chat_ended"
CHAT_ANALYZED = "chat_analyzed"
CHAT_HANDOFF = "chat_handoff"  # the agent handed the chat to a human (its handoff_to_human tool)
MESSAGE_RECEIVED = "message_received"
MESSAGE_STATUS = "message_status"
EVENTS = (CHAT_STARTED, CHAT_ENDED, CHAT_ANALYZED, CHAT_HANDOFF, MESSAGE_RECEIVED, MESSAGE_STATUS)
DEFAULT_EVENTS = (CHAT_STARTED, CHAT_ENDED, CHAT_ANALYZED, CHAT_HANDOFF)

DELIVER_JOB = "workers.event_jobs.deliver_event"
DELIVERY_TIMEOUT = 10.0  # seconds for one whole POST (DNS lookup, connect, send, answer read)
DELIVERY_RETRY_INTERVALS = [1, 10, 60, 300]  # 5 attempts in all, over about six minutes
DELIVERY_JOB_TIMEOUT = 60
ATTEMPTS_KEPT = 50
SIGNATURE_HEADER = "X-Smsgw-Signature"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The X-Smsgw-Signature value for `body`: `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


NO_SECRET = (
    "Not sent: there is no secret to sign it with (set the agent's webhook_secret, or EVENTS_WEBHOOK_SECRET)."
)


def signing_secret(agent: Agent, settings: Settings) -> str | None:
    """The secret signing an agent's own webhook deliveries and its tool calls: the agent's
    `webhook_secret`, else EVENTS_WEBHOOK_SECRET (None: nothing may be sent)."""
    return agent.webhook_secret or settings.events_webhook_secret


def endpoint_for(agent: Agent, settings: Settings) -> tuple[str | None, str | None]:
    """The URL an agent's events go to and the secret that signs them (None, None: no webhook)."""
    if agent.webhook_url:
        return agent.webhook_url, signing_secret(agent, settings)
    if settings.events_webhook_url:
        return settings.events_webhook_url, settings.events_webhook_secret
    return None, None


def delivery_concurrency(settings: Settings) -> int:
    """How many deliveries may be queued or running at once: a quarter of a worker's threads, so
    deliveries that hang until their timeout never take the threads replies need."""
    return max(1, settings.worker_concurrency // 4)


def delivery_rate_limit(settings: Settings) -> RateLimit:
    """The RQ rate limit every delivery of this gateway is queued under."""
    return RateLimit(f"{settings.queue_prefix}:event-deliveries", concurrency=delivery_concurrency(settings))


def subscribed(agent: Agent, event: str) -> bool:
    """True when the agent's webhook takes this event (its `webhook_events`, else the default set)."""
    wanted = agent.webhook_events if agent.webhook_events is not None else DEFAULT_EVENTS
    return event in wanted


def timestamp() -> str:
    """Now as ISO 8601 UTC with a Z."""
    return utcnow().isoformat(timespec="milliseconds") + "Z"


def emit(
    queue: Queue | None,
    settings: Settings,
    event: str,
    chat_id: str,
    *,
    message: dict[str, Any] | None = None,
) -> None:
    """Queue the delivery of `event` for a chat when its agent's webhook takes it. Never raises.

    Call it after the transaction that made the change has committed (the job reads the chat).
    """
    if queue is None:
        return
    try:
        # Only what decides the delivery: this runs in every webhook, and a whole agent row is wide.
        agent = (
            Agent.select(Agent.webhook_url, Agent.webhook_secret, Agent.webhook_events)
            .join(Chat, on=(Chat.agent == Agent.agent_id))
            .where(Chat.chat_id == chat_id)
            .get()
        )
        url, _ = endpoint_for(agent, settings)
        if url is None or not subscribed(agent, event):
            return
        queue.enqueue(
            DELIVER_JOB,
            event,
            chat_id,
            timestamp(),
            message,
            retry=Retry(max=len(DELIVERY_RETRY_INTERVALS), interval=DELIVERY_RETRY_INTERVALS),
            rate_limit=delivery_rate_limit(settings),
            job_timeout=DELIVERY_JOB_TIMEOUT,
            result_ttl=600,
            failure_ttl=7 * 24 * 3600,
            description=f"deliver {event} of {chat_id}",
        )
    except RedisError as exc:
        log.warning("events: could not queue %s of %s: %s", event, chat_id, exc)
    except Exception:
        log.exception("events: could not queue %s of %s", event, chat_id)


def chat_payload(chat: Chat) -> dict[str, Any]:
    """The `chat` object of an event: what a business system needs to file it."""

    def iso(value: Any) -> str | None:
        return value.isoformat(timespec="milliseconds") + "Z" if value is not None else None

    return {
        "chat_id": chat.chat_id,
        "agent_id": chat.agent_id,
        "chat_type": chat.chat_type,
        "chat_status": chat.chat_status,
        "user_id": chat.user_id,
        "from_number": chat.from_number,
        "to_number": chat.to_number,
        "metadata": chat.metadata or {},
        "start_timestamp": iso(chat.start_timestamp),
        "end_timestamp": iso(chat.end_timestamp),
        "end_reason": chat.end_reason,
        "chat_analysis": chat.chat_analysis,
    }


def event_body(event: str, occurred_at: str, chat: Chat, message: dict[str, Any] | None) -> bytes:
    """The JSON body of one delivery (compact, so the signed bytes are the sent bytes)."""
    payload: dict[str, Any] = {"event": event, "occurred_at": occurred_at, "chat": chat_payload(chat)}
    if message is not None:
        payload["message"] = message
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


# --- the attempts log ---------------------------------------------------------------------------------


def attempts_key(settings: Settings, url: str) -> str:
    """The Redis list holding an endpoint's newest delivery attempts."""
    return f"{settings.queue_prefix}:webhook-attempts:{hashlib.sha256(url.encode()).hexdigest()[:24]}"


def record_attempt(redis: Redis, settings: Settings, url: str, attempt: dict[str, Any]) -> None:
    """Keep one delivery attempt (newest first, ATTEMPTS_KEPT per endpoint); best effort."""
    key = attempts_key(settings, url)
    try:
        with redis.pipeline() as pipe:
            pipe.lpush(key, json.dumps(attempt))
            pipe.ltrim(key, 0, ATTEMPTS_KEPT - 1)
            pipe.expire(key, 30 * 24 * 3600)
            pipe.execute()
    except RedisError as exc:
        log.warning("events: could not record a delivery attempt: %s", exc)


def recent_attempts(
    redis: Redis | None, settings: Settings, url: str, limit: int = ATTEMPTS_KEPT
) -> list[dict]:
    """An endpoint's newest delivery attempts, newest first ([] without Redis)."""
    if redis is None:
        return []
    try:
        raw = redis.lrange(attempts_key(settings, url), 0, limit - 1)
    except RedisError as exc:
        log.warning("events: could not read the delivery attempts: %s", exc)
        return []
    return [json.loads(item) for item in raw]
