"""The Redis counting semaphore behind `max_concurrent_invocations`, on the real test Redis."""

from __future__ import annotations

import pytest

from gateway.api.concurrency import Semaphore, SlotsBusy
from tests.conftest import wait_for


def test_at_most_limit_holders(redis_conn):
    sem = Semaphore(redis_conn, "sem:test", limit=2, lease=60)
    a, b = sem.try_acquire(), sem.try_acquire()
    assert a and b and a != b
    assert sem.try_acquire() is None
    with pytest.raises(SlotsBusy):
        sem.acquire(wait=0.1)
    sem.release(a)
    assert sem.try_acquire() is not None


def test_a_crashed_holder_frees_its_slot_when_the_lease_ends(redis_conn):
    sem = Semaphore(redis_conn, "sem:crash", limit=1, lease=0.2)
    assert sem.try_acquire() is not None  # never released, as if the process died
    assert sem.try_acquire() is None
    wait_for(sem.try_acquire, timeout=10, message="the expired lease to free the slot")


def test_the_key_expires_with_its_last_lease(redis_conn):
    sem = Semaphore(redis_conn, "sem:ttl", limit=3, lease=30)
    sem.try_acquire()
    assert 0 < redis_conn.pttl("sem:ttl") <= 30_000


def test_slot_context_releases(redis_conn):
    sem = Semaphore(redis_conn, "sem:ctx", limit=1, lease=60)
    with sem.slot(wait=0):
        assert sem.try_acquire() is None
    assert sem.try_acquire() is not None


def test_limit_must_be_positive(redis_conn):
    with pytest.raises(ValueError):
        Semaphore(redis_conn, "sem:bad", limit=0, lease=1)
