"""RQ job delivering one chat event to its webhook (queued by gateway.events.emit).

A network error, timeout, 408, 429 or 5xx raises TransientError, so RQ runs the job again after
the next of events.DELIVERY_RETRY_INTERVALS; a URL the guard refuses or another 4xx is recorded
and given up at once (sending the same request again would be refused the same way). A delivery
with no secret to sign it is never sent: it is recorded as refused.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import get_current_job

from gateway import events, metrics, safe_http
from gateway.errors import PermanentError, TransientError, http_status_is_transient
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat
from workers.context import get_settings

log = logging.getLogger(__name__)


def retries_allowed() -> int:
    """How many retries this delivery has: its job's own policy (emit() queues one interval per
    retry), else events.DELIVERY_RETRY_INTERVALS."""
    job = get_current_job()
    if job is not None and job.retry_intervals:
        return len(job.retry_intervals)
    return len(events.DELIVERY_RETRY_INTERVALS)


def attempt_number() -> int:
    """Which attempt this run of the job is (1 for the first)."""
    job = get_current_job()
    if job is None or job.retries_left is None:
        return 1
    return retries_allowed() - job.retries_left + 1


def deliver_event(event: str, chat_id: str, occurred_at: str, message: dict[str, Any] | None = None) -> str:
    """POST one event, signed, to the chat's agent's webhook; record the attempt; returns the outcome."""
    settings = get_settings()
    with database.connection_context():
        chat = Chat.get_or_none(Chat.chat_id == chat_id)
        if chat is None:
            return "skipped: the chat no longer exists"
        agent = Agent.get_by_id(chat.agent_id)
    url, secret = events.endpoint_for(agent, settings)
    if url is None:
        return "skipped: no webhook configured any more"
    body = events.event_body(event, occurred_at, chat, message)
    headers = {"Content-Type": "application/json", "User-Agent": "smsgw-events/1"}
    if secret:  # without one nothing is sent (below)
        headers[events.SIGNATURE_HEADER] = events.sign(secret, body)
    attempt: dict[str, Any] = {
        "event": event,
        "chat_id": chat_id,
        "agent_id": agent.agent_id,
        "attempt": attempt_number(),
        "attempted_at": events.timestamp(),
        "status_code": None,
        "outcome": "delivered",
        "error": None,
    }
    started = time.perf_counter()
    retry: TransientError | None = None
    try:
        if not secret:
            raise PermanentError(events.NO_SECRET, "no_secret")
        answer = safe_http.post(
            url,
            body,
            headers=headers,
            timeout=events.DELIVERY_TIMEOUT,
            allow_private=settings.allow_private_urls,
        )
        attempt["status_code"] = answer.status
        if not 200 <= answer.status < 300:
            attempt["error"] = f"The endpoint answered {answer.status}."
            if http_status_is_transient(answer.status):
                retry = TransientError(attempt["error"], answer.status)
            attempt["outcome"] = "failed"
    except TransientError as exc:
        attempt["outcome"], attempt["error"], retry = "failed", exc.reason, exc
    except PermanentError as exc:
        attempt["outcome"], attempt["error"] = "refused", exc.reason
    attempt["duration_ms"] = round((time.perf_counter() - started) * 1000)
    if retry is not None and attempt["attempt"] > retries_allowed():
        attempt["outcome"] = "gave_up"
    metrics.count("webhook_deliveries", event=event, outcome=attempt["outcome"])
    job = get_current_job()
    if job is not None:
        events.record_attempt(job.connection, settings, url, attempt)
    log.info("events: %s of %s to %s: %s %s", event, chat_id, url, attempt["outcome"], attempt["error"] or "")
    if retry is not None:
        raise retry
    return attempt["outcome"]
