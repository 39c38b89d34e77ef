"""Module-level job functions for the worker tests (RQ imports them by dotted path).

Jobs that need shared state keep it in Redis, reached through the running job's own connection,
so they work the same in a worker thread, a worker process or a forked work horse.
"""

from __future__ import annotations

import json
import threading
import time

from rq import get_current_job


def _redis():
    """The Redis connection of the job running in this thread."""
    job = get_current_job()
    assert job is not None, "only callable as an RQ job"
    return job.connection


def _record(key: str, **fields) -> None:
    """Append a JSON record to the Redis list `key`."""
    _redis().rpush(key, json.dumps(fields))


def sleep_then_return(seconds: float, value=None, log_key: str | None = None):
    """Sleep in small steps (so a timeout can interrupt it), note start/end in `log_key`, return value."""
    started = time.time()
    if log_key:
        _record(log_key + ":started", value=value, t=started)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    if log_key:
        _record(log_key, value=value, start=started, end=time.time(), thread=threading.get_ident())
    return value


def fail_always(message: str = "boom"):
    """Raise ValueError(message)."""
    raise ValueError(message)


def fail_n_times(counter_key: str, failures: int, value="ok"):
    """Raise on the first `failures` calls (counted in Redis), then return `value`."""
    attempt = _redis().incr(counter_key)
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return value


def slow_first_time(counter_key: str, seconds: float, value="second run"):
    """Sleep `seconds` on the first run (long enough to kill the worker meanwhile); return at once after."""
    attempt = _redis().incr(counter_key)
    if attempt == 1:
        sleep_then_return(seconds)
        return "first run"
    return value


def touch_database(log_key: str):
    """Open this thread's peewee connection and record its id; the worker must close it after."""
    from gateway.storage.db import database

    database.connect(reuse_if_open=True)
    database.execute_sql("SELECT 1")
    _record(log_key, conn=id(database.connection()))
    _CONNECTIONS.append(database.connection())
    return True


# Connections opened by touch_database in this process (the in-process test checks them closed).
_CONNECTIONS: list = []


def settings_field(name: str):
    """Return one field of the settings the worker configured (workers.context)."""
    from workers.context import get_settings

    return getattr(get_settings(), name)


def tick(log_key: str):
    """A periodic job: note that it ran."""
    _record(log_key, t=time.time())
    return True
