"""The RQ side of the web process: the Redis connection, the queue and what goes on it."""

from __future__ import annotations

import io
import json
import logging
import pickle
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, Retry, get_current_job
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimit

from gateway.clients import ClientCache
from gateway.config import Settings

log = logging.getLogger(__name__)

# Jobs are enqueued by dotted path, so the web process never imports worker code.
REPLY_JOB = "workers.jobs.reply_to_message"
OPENING_JOB = "workers.jobs.send_opening"
OPERATOR_JOB = "workers.jobs.send_operator_parts"
# A reply waits on the model (seconds) and Twilio; past this RQ stops it and retries.
REPLY_JOB_TIMEOUT = 300

# Job states of a job that has not started yet: it will read the newest data when it does.
WAITING_STATES = frozenset(
    {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.RATE_LIMITED}
)
# Job states in which a job will still run (or is running): enqueueing again would double it.
LIVE_STATES = WAITING_STATES | {JobStatus.STARTED}


class JobSerializer:
    """Jobs, their results and metadata as JSON in Redis: data, never code (RQ pickles by default).

    Everything that talks to the queue uses it (`job_queue`, `fetch_job`, the worker), so a
    job's arguments must be JSON (ids and strings: tuples come back as lists). Data pickled by
    an older version of the gateway is still read, but only when it is plain data: a pickle that
    names any class or function (the way pickles run code) is refused, and the job fails with
    that reason instead of running it.
    """

    @staticmethod
    def dumps(obj: Any) -> bytes:
        """JSON bytes; a value JSON cannot hold is a TypeError at enqueue, not a surprise later."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @staticmethod
    def loads(data: bytes) -> Any:
        """The value; a legacy pickle only if it builds nothing but plain data."""
        if data[:1] == b"\x80":  # pickle protocol 2+ starts so; JSON never does
            return _PlainDataUnpickler(io.BytesIO(data)).load()
        return json.loads(data)


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles str, numbers, lists, tuples, dicts and sets, and refuses any global (class, function)."""

    def find_class(self, module: str, name: str) -> Any:
        """Refuse: a global in a job's pickle is how a pickle runs code."""
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name} from a pickled job: the gateway reads jobs as JSON"
        )


def job_queue(name: str, connection: Redis) -> Queue:
    """The RQ queue `name` on `connection`, speaking the gateway's JSON job format."""
    return Queue(name, connection=connection, serializer=JobSerializer)


def fetch_job(job_id: str, connection: Redis) -> Job:
    """RQ's Job.fetch with the gateway's JSON job format; raises NoSuchJobError."""
    return Job.fetch(job_id, connection=connection, serializer=JobSerializer)


# The errors that mean "Redis is unreachable right now" (as opposed to a bad command).
REDIS_DOWN_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


class RedisOutage:
    """One process's view of whether Redis is reachable: one log line when it goes, one when it is back.

    Every loop that talks to Redis (the worker's dequeue, heartbeats, scheduler and cron threads,
    the web's enqueues) reports here, so an outage of any length logs two lines per process,
    not a traceback per poll. `wait()` is the bounded backoff between attempts while it is down:
    1 s, doubling up to `max_wait`, so a Redis that comes back is noticed within seconds.
    """

    def __init__(self, who: str, log: logging.Logger = log, max_wait: float = 5.0) -> None:
        """`who` names the process in the two log lines (e.g. "worker w1", "web")."""
        self.who = who
        self.log = log
        self.max_wait = max_wait
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._wait = 1.0
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        """True between a failure and the next success."""
        return self._down_since is not None

    def failed(self, error: BaseException) -> float:
        """Record a failed Redis call; returns how long to wait before the next attempt."""
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                self._wait = 1.0
                self.log.error(
                    "%s: Redis is unreachable (%s); retrying with backoff up to %.0f s, "
                    "nothing is lost meanwhile",
                    self.who,
                    _one_line(error),
                    self.max_wait,
                )
            else:
                self._wait = min(self._wait * 2, self.max_wait)
            self._retry_at = time.monotonic() + self._wait
            return self._wait

    def ok(self) -> None:
        """Record a successful Redis call (logs once when this ends an outage)."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            took = time.monotonic() - self._down_since
            self._down_since = None
            self._wait = 1.0
            self.log.warning("%s: Redis is reachable again after %.1f s", self.who, took)

    def should_try(self) -> bool:
        """False while down and the backoff has not passed (callers skip the attempt)."""
        return self._down_since is None or time.monotonic() >= self._retry_at


def _one_line(error: BaseException) -> str:
    """An exception as one short line for the outage log."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:200]


def connect_redis(url: str, *, for_web: bool = False) -> Redis:
    """A Redis client for `url`; the web's gives up fast so a webhook never hangs on Redis."""
    if for_web:
        return Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2, health_check_interval=30)
    return Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)


_redis_clients: ClientCache[Redis] = ClientCache()


def redis_for(settings: Settings) -> Redis | None:
    """The running job's Redis connection, else this process's client for REDIS_URL (None: unset)."""
    job = get_current_job()
    if job is not None:
        return job.connection
    if not settings.redis_url:
        return None
    url = settings.redis_url
    return _redis_clients.get(url, lambda: connect_redis(url))


def queue_name(settings: Settings, name: str = "default") -> str:
    """The RQ queue name, prefixed so gateways (and test runs) can share one Redis."""
    return f"{settings.queue_prefix}-{name}"


def reply_job_id(message_id: int) -> str:
    """The job id of the reply to one inbound message: deterministic, so it is enqueued once.

    Zero-padded: RQ's rate limiter breaks ties between jobs queued in the same second by job id
    as text, and "reply-10" would sort before "reply-9".
    """
    return f"reply-{message_id:012d}"


def _fetch_or_none(connection: Redis, job_id: str) -> Job | None:
    """The job, or None when there is none (or its hash expired or lost fields)."""
    try:
        return fetch_job(job_id, connection)
    except Exception:  # NoSuchJobError, or a hash missing fields
        return None


def job_status(connection: Redis, job_id: str) -> JobStatus | None:
    """A job's status, or None when there is no such job."""
    job = _fetch_or_none(connection, job_id)
    return job.get_status(refresh=False) if job is not None else None


def job_is_live(
    connection: Redis,
    job_id: str,
    *,
    settle: Callable[[Job], JobStatus | None] | None = None,
    clear_dead: bool = False,
) -> bool:
    """True when a job with this id exists and will still run: the one live-job check.

    `settle(job)` gives the job's status after the caller settled what a dead worker left (the
    sweep frees a stale rate-limit slot, hands an abandoned job back to RQ; None: the job is
    gone). With `clear_dead` a job that will not run (failed, stopped, canceled, finished) is
    deleted, so its id can be enqueued afresh.
    """
    job = _fetch_or_none(connection, job_id)
    if job is None:
        return False
    status = job.get_status(refresh=False) if settle is None else settle(job)
    if status is None:
        return False
    if status in LIVE_STATES:
        return True
    if clear_dead:
        try:
            job.delete()
        except InvalidJobOperation:  # a hash left without its status (a late heartbeat): just drop it
            connection.delete(job.key)
    return False


def retry_policy(retry_attempts: int, retry_delay: float, jitter: float = 0.25) -> Retry | None:
    """RQ's Retry with exponential backoff from `retry_delay` seconds, with jitter, or None."""
    if retry_attempts < 1:
        return None
    intervals = []
    for attempt in range(retry_attempts):
        base = max(retry_delay, 0.0) * (2**attempt)
        spread = base * jitter
        # RQ schedules retries in whole seconds; 0 means "again at once".
        intervals.append(max(0, round(base + random.uniform(-spread, spread))))
    return Retry(max=retry_attempts, interval=intervals)


def enqueue_reply(
    queue: Queue,
    *,
    chat_id: str,
    message_id: int,
    retry: Retry | None,
    check_existing: bool = True,
) -> Job | None:
    """Queue the reply to an inbound message, one chat at a time, unless it is already queued.

    RQ's per-key rate limit (concurrency 1 per chat) makes replies in one chat run in order,
    oldest first, so a burst of texts never gets two replies racing for the same chat.
    """
    return _enqueue_in_chat(
        queue,
        REPLY_JOB,
        message_id,
        job_id=reply_job_id(message_id),
        chat_id=chat_id,
        retry=retry,
        check_existing=check_existing,
        description=f"reply to message {message_id} in {chat_id}",
    )


def _enqueue_in_chat(
    queue: Queue,
    func: str,
    arg: object,
    *,
    job_id: str,
    chat_id: str,
    retry: Retry | None,
    check_existing: bool,
    description: str,
    at: datetime | None = None,
) -> Job | None:
    """Queue a job that sends in a chat, behind the chat's other such jobs (one at a time);
    with `at` (naive UTC), RQ's scheduler enqueues it then."""
    if check_existing and job_is_live(queue.connection, job_id):
        return None
    enqueue = queue.enqueue if at is None else partial(queue.enqueue_at, at.replace(tzinfo=UTC))
    return enqueue(
        func,
        arg,
        job_id=job_id,
        rate_limit=RateLimit(f"chat:{chat_id}", concurrency=1),
        retry=retry,
        job_timeout=REPLY_JOB_TIMEOUT,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=description,
    )


def opening_job_id(chat_id: str) -> str:
    """The job id of an outbound chat's opening text: one per chat."""
    return f"opening-{chat_id}"


def enqueue_opening(
    queue: Queue,
    *,
    chat_id: str,
    retry: Retry | None,
    check_existing: bool = True,
    at: datetime | None = None,
) -> Job | None:
    """Queue the job that writes (if needed) and sends an outbound chat's opening text.

    Same per-chat key as replies: an early answer from the person waits for the opening. With
    `at` (naive UTC: the agent's sending hours are closed now) it waits in RQ's scheduler.
    """
    return _enqueue_in_chat(
        queue,
        OPENING_JOB,
        chat_id,
        job_id=opening_job_id(chat_id),
        chat_id=chat_id,
        retry=retry,
        check_existing=check_existing,
        description=f"opening text of {chat_id}",
        at=at,
    )


def enqueue_operator_parts(queue: Queue, *, chat_id: str, first_message_id: int) -> Job | None:
    """Queue the job that sends an operator's text (its parts without a SID) in a held chat.

    Same per-chat key as replies, so the operator's text and a reply never interleave.
    """
    return _enqueue_in_chat(
        queue,
        OPERATOR_JOB,
        chat_id,
        job_id=f"operator-{first_message_id:012d}",
        chat_id=chat_id,
        retry=retry_policy(3, 1.0),
        check_existing=False,
        description=f"operator's text in {chat_id}",
    )
