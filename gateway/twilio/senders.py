"""How one of our numbers sends: From itself or through a Messaging Service, and at what pace.

A number (`PhoneNumber.messaging_service_sid`) or the whole gateway (TWILIO_MESSAGING_SERVICE_SID)
may send through a Messaging Service: Twilio then gets `MessagingServiceSid` instead of `From`
and picks the sender from the service's pool (sticky sender, A2P 10DLC campaigns).

A number may carry a send rate (`PhoneNumber.max_mps`, messages per second). Every worker
process and thread shares it through one Redis key per sender that holds the next free send
slot: `reserve_slot` takes a slot atomically (a Lua script, Redis's own clock) and says how long
to wait for it. A slot less than `MAX_WAIT` away is waited for in the thread; a later one is not
taken, and the caller is told to come back (`SenderPaced`) so a burst from one number never
holds worker threads that other numbers' replies need.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError

from gateway.config import Settings
from gateway.errors import TransientError
from gateway.queue import redis_for
from gateway.storage.models import PhoneNumber
from gateway.twilio.channels import bare_number

log = logging.getLogger(__name__)

# The longest a thread waits in place for its send slot; further away, the job comes back later.
MAX_WAIT = 1.0
# The TransientError code of a send put off because its sender is at its rate.
SENDER_PACED = "sender_paced"

# KEYS[1]: the sender's next free slot (ms, Redis time). ARGV: interval ms, longest wait ms.
# Returns {1, wait_ms} when a slot was taken, {0, wait_ms} when the next one is too far away.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local wait = slot - now
if wait > tonumber(ARGV[2]) then
  return {0, wait}
end
redis.call('SET', KEYS[1], slot + interval, 'PX', wait + interval + 1000)
return {1, wait}
"""


class SenderPaced(TransientError):
    """The sender is at its rate: try this send again after `wait` seconds (no retry is used up)."""

    def __init__(self, sender: str, wait: float) -> None:
        """Say which sender and how long until its next free slot."""
        super().__init__(f"{sender} is at its send rate; the next slot is {wait:.1f} s away.", SENDER_PACED)
        self.wait = wait


@dataclass(frozen=True)
class Sender:
    """What Twilio is told about who sends: From, or a Messaging Service; and the rate, if any."""

    address: str  # our number or whatsapp: address, as the chat has it
    messaging_service_sid: str | None = None
    max_mps: float | None = None


def sender_for(settings: Settings, address: str) -> Sender:
    """How `address` (ours) sends, from its PhoneNumber row and the gateway's settings."""
    row = (
        PhoneNumber.select(PhoneNumber.messaging_service_sid, PhoneNumber.max_mps)
        .where(PhoneNumber.phone_number == bare_number(address))
        .tuples()
        .first()
    )
    service, max_mps = row if row else (None, None)
    return Sender(
        address=address,
        messaging_service_sid=service or settings.twilio_messaging_service_sid,
        max_mps=max_mps if max_mps and max_mps > 0 else None,
    )


def pace_key(settings: Settings, address: str) -> str:
    """The Redis key holding this sender's next free send slot."""
    return f"{settings.queue_prefix}:pace:{address}"


def reserve_slot(connection: Redis, key: str, max_mps: float, max_wait: float = MAX_WAIT) -> float | None:
    """Take the sender's next send slot: seconds to wait for it; None when further off than `max_wait`."""
    interval_ms = max(1, round(1000 / max_mps))
    taken, wait_ms = connection.eval(_RESERVE, 1, key, interval_ms, round(max_wait * 1000))
    return wait_ms / 1000 if taken else None


def wait_for_slot(settings: Settings, sender: Sender) -> None:
    """Hold this send until the sender's rate allows it; raise SenderPaced when that is too far off.

    Without a rate, or without Redis (the gateway runs without a queue), nothing is paced.
    """
    if sender.max_mps is None:
        return
    connection = redis_for(settings)
    if connection is None:
        return
    key = pace_key(settings, sender.address)
    try:
        wait = reserve_slot(connection, key, sender.max_mps)
    except RedisError as exc:
        log.warning("send rate of %s not applied: Redis failed (%s)", sender.address, exc)
        return
    if wait is None:
        # How far the next free slot is, without taking it; the job comes back about then.
        next_slot = _next_slot_wait(connection, key)
        raise SenderPaced(sender.address, max(next_slot - MAX_WAIT, MAX_WAIT))
    if wait > 0:
        time.sleep(wait)


def _next_slot_wait(connection: Redis, key: str) -> float:
    """Seconds until the sender's next free slot (0 when free now)."""
    try:
        seconds, micros = connection.time()
        stored = float(connection.get(key) or 0)
    except RedisError:
        return MAX_WAIT
    return max(0.0, (stored - (seconds * 1000 + micros // 1000)) / 1000)
