"""A counting semaphore on Redis: at most N holders per key, each slot leased so a crash frees it.

Holders live in a sorted set scored by their lease's end (Redis's own clock, so several web
machines agree). Taking a slot first drops expired leases, then adds ours if fewer than N remain,
in one Lua script: atomic, no lock needed. Releasing removes our token. A process that dies while
holding a slot only keeps it until its lease ends; the set itself expires with its last lease.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

ACQUIRE = """
local key, limit, lease_ms, token = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) >= limit then
  return 0
end
redis.call('ZADD', key, now + lease_ms, token)
if redis.call('PTTL', key) < lease_ms then
  redis.call('PEXPIRE', key, lease_ms)
end
return 1
"""

# How often a waiter asks again (seconds); jittered so waiters don't ask in lockstep.
POLL_INTERVAL = 0.05


class SlotsBusy(Exception):
    """Every slot stayed taken for as long as the caller would wait."""


class Semaphore:
    """At most `limit` holders of `key` at once, each for at most `lease` seconds."""

    def __init__(self, redis: Redis, key: str, *, limit: int, lease: float) -> None:
        """Name the semaphore; nothing is taken yet."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.redis = redis
        self.key = key
        self.limit = limit
        self.lease_ms = max(1, int(lease * 1000))
        self._acquire = redis.register_script(ACQUIRE)

    def try_acquire(self) -> str | None:
        """Take a slot now if one is free: its token, or None."""
        token = secrets.token_hex(8)
        taken = self._acquire(keys=[self.key], args=[self.limit, self.lease_ms, token])
        return token if int(taken) == 1 else None

    def acquire(self, wait: float) -> str:
        """Take a slot, waiting up to `wait` seconds for one; SlotsBusy when none came free."""
        deadline = time.monotonic() + wait
        while True:
            token = self.try_acquire()
            if token is not None:
                return token
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SlotsBusy(self.key)
            time.sleep(min(remaining, POLL_INTERVAL * random.uniform(0.5, 1.5)))

    def release(self, token: str) -> None:
        """Give the slot back (a no-op when its lease already ended)."""
        self.redis.zrem(self.key, token)

    @contextmanager
    def slot(self, wait: float) -> Iterator[str]:
        """Hold a slot for the duration of a `with` block."""
        token = self.acquire(wait)
        try:
            yield token
        finally:
            self.release(token)
