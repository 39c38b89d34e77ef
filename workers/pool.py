"""ThreadPoolWorker: an RQ worker that runs up to `concurrency` jobs at once, each in a thread.

Why: a reply job spends seconds waiting on the model's HTTP API. RQ's default `Worker` forks a
process per job in flight (~80 MB each with our imports), so 200 conversations in flight would
need ~16 GB. Here a job in flight costs a thread (tens of KB of touched stack) in one process.

What is kept from RQ (the job side is RQ's own code, run in a thread):

- Dequeue: the main thread dequeues only while a slot is free (a bounded semaphore), with a
  short blocking poll (`dequeue_poll_interval`, 1 s) so it notices stop requests promptly. With
  one queue RQ dequeues by BLMOVE into the queue's intermediate list, exactly as stock.
- Executions: `prepare_execution` runs in the main thread right after dequeue, so the job is in
  `StartedJobRegistry` (and in the worker's execution index `rq:worker:<name>:executions`) before
  its thread starts; `perform_job` (status STARTED, timeout, success/failure/Retry handling,
  result, dependents, rate-limit slot release) runs in the job's thread. `Worker.all()` /
  `get_current_executions()` show every job in flight; the worker state is `busy` while any job is
  in flight and `idle` otherwise.
- Heartbeats: a heartbeat thread refreshes, every `heartbeat_interval` (5 s, the setting
  WORKER_HEARTBEAT_INTERVAL), the worker key with a TTL of three intervals (`liveness_ttl`, at
  least 5 s) and, in one pipeline, each in-flight execution (`StartedJobRegistry` score, execution
  hash, job `last_heartbeat`) with the forking `Worker`'s TTL rule, min(time left, 30 s) + 60 s. So
  a running job stays in StartedJobRegistry however long the main thread blocks, and a worker that
  stops beating counts as dead within `liveness_ttl` (see "Abandoned jobs" below).
- Timeouts: `ThreadDeathPenalty` raises `JobTimeoutException` in the job's thread from one
  watchdog thread (`PyThreadState_SetAsyncExc`, like RQ's `TimerDeathPenalty`, which needs a
  timer thread per job and patches the exception class globally). Caveat: an asynchronous
  exception is delivered only when the thread runs Python bytecode; a thread blocked in a C call
  (a socket read without timeout) is interrupted when that call returns. Jobs must therefore put
  timeouts on their network calls (the model client uses settings.model_timeout). A job running
  past timeout + 60 s is logged; its heartbeats continue, since the thread really is still running.
- Retry / RateLimit / failures: untouched RQ paths (`handle_job_failure` retries or records the
  traceback in FailedJobRegistry; `release_slot` frees a RateLimit slot and promotes the next job
  of that key). Retries with an interval are enqueued by RQ's scheduler, which here runs in a
  thread of this process (`ThreadScheduler`) rather than a forked process: forking a process that
  has 200 threads is unsafe (locks held by other threads stay locked in the child).
- Warm shutdown (SIGTERM/SIGINT): stop dequeuing, let every job in flight finish, then register
  death. The handler only sets a flag (a handler touching Redis or a lock could deadlock the
  main thread it interrupted), so a job popped by the BLMOVE already waiting when the signal
  came (<= 1 s) is still run to completion, never dropped.
- Cold shutdown (a second signal, more than 1 s after the first, as in stock RQ):
  `ColdShutdownError` is raised in every job thread, so each job goes through RQ's failure
  path (retried when it has retries left, else failed with that traceback); threads that do not react within
  `cold_shutdown_grace` seconds (blocked in C) are left to the abandoned-job cleanup below.
- stop-job / stop-execution commands (`rq.command.send_stop_job_command`): `StopJobError` is
  raised in that job's thread and RQ records the job as STOPPED.
- The database: after each job the thread's peewee connection is closed, so pooled PostgreSQL
  connections go back to the pool and SQLite handles of finished threads never leak.

Abandoned jobs (worker SIGKILLed, machine lost). RQ 3.0 alone leaves the job STARTED in
StartedJobRegistry until its execution's expiry score (last heartbeat + <= 90 s) has passed and
a worker's maintenance runs `StartedJobRegistry.cleanup`: a minute or more of silence for the
person waiting. Here every worker runs `reap_abandoned()` every `reap_interval` (2 s): an entry
whose worker is certainly dead (`worker_is_dead`: its registration expired, it registered its
death, or it ran on this machine and its process is gone or its pid was reused) gets its score
set to 0 and RQ's own cleanup handles it at once: failure callback and exception handlers with
`AbandonedJobError`, then `job.retry()` if the job has retries left (else FAILED in
FailedJobRegistry), and its RateLimit slot released so the chat's next job is promoted. A retry
RQ scheduled after a backoff is enqueued at once (`run_now`): the death was no service's fault.
A job popped into the intermediate list but never started (killed between BLMOVE and
prepare_execution) is failed or retried by `IntermediateQueue.cleanup` a minute or two later
(the gateway's sweep does not wait for it: see workers/jobs.py). tests/test_worker_pool.py checks
RQ's retried and failed cases on a real Redis; tests/test_faults.py the whole path.

Redis outages: every loop here (the main loop's dequeue and maintenance, heartbeats, the
scheduler thread, RQ's command channel) reports to one `RedisOutage` per worker: one log line
when Redis goes, one when it is back, a bounded backoff (1 s doubling to 5 s) between attempts,
never an exit. A job thread whose bookkeeping fails on Redis logs one line; its own work is in the
database, and the entries it could not settle are settled by the cleanup or the gateway's sweep.
After a Redis restart that lost the data, the next heartbeat registers the worker again.

Scheduler lock: every worker runs a `ThreadScheduler` thread; the one holding the queue's lock
moves due jobs, the others stand by and try for it every 2 s, taking it at once when its holder
(an owner token naming host, pid and process start time, see gateway.processes) is a process of
this machine that is gone. A warm shutdown releases it.

Entry point for tests and the benchmark: `python -m workers.pool --url redis://... --queue NAME`.
Jobs are read and written as JSON (gateway.queue.JobSerializer), as everywhere in the gateway.
The gateway's worker is started by `workers.runner.run_worker` (`smsgw worker`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import heapq
import itertools
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from redis import Redis
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import DequeueTimeout, NoSuchJobError, StopRequested
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry, clean_registries
from rq.scheduler import RQScheduler
from rq.scripts import release_lock
from rq.timeouts import BaseDeathPenalty, JobTimeoutException
from rq.utils import current_timestamp, now
from rq.worker import SimpleWorker, Worker, WorkerStatus
from rq.worker.base import BaseWorker, DequeueStrategy
from rq.worker_registration import clean_worker_registry
from rq.worker_registration import register as register_worker_key

from gateway.processes import owner_is_dead, owner_token, process_is_alive
from gateway.queue import REDIS_DOWN_ERRORS, JobSerializer, RedisOutage

log = logging.getLogger(__name__)

# The longest an abandoned-job cleanup may hold its lock (see `reaping`).
REAPING_LOCK_TTL = 10
# As RQ's own registry-cleaning lock: held at most this long by a worker that cleans, then freed.
MAINTENANCE_LOCK_TTL = 899
# How often the command channel's thread polls (RQ: 60 s); also the longest a shutdown waits on it.
PUBSUB_POLL_SECONDS = 1.0


class ColdShutdownError(Exception):
    """Raised inside a job's thread when the worker is told to stop at once (second signal)."""


class StopJobError(Exception):
    """Raised inside a job's thread when RQ's stop-job command names it."""


# --- raising an exception in another thread -------------------------------------------------


def _async_raise(thread_id: int, exc_type: type[BaseException] | None) -> int:
    """Make `exc_type` be raised in thread `thread_id` (None clears a pending one); threads hit."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else ctypes.c_void_p()
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


@functools.lru_cache(maxsize=256)
def _with_message(exception: type[BaseException], message: str) -> type[BaseException]:
    """A subclass of `exception` whose no-argument constructor carries `message`.

    PyThreadState_SetAsyncExc takes a class and instantiates it without arguments; a subclass
    per message keeps concurrent jobs from sharing (and overwriting) one patched class.
    """

    def __init__(self, *args: Any) -> None:
        exception.__init__(self, *(args or (message,)))

    return type(
        exception.__name__,
        (exception,),
        {"__init__": __init__, "__module__": exception.__module__, "__qualname__": exception.__qualname__},
    )


class _Watchdog:
    """One daemon thread that fires every due death penalty, instead of a timer thread per job."""

    def __init__(self) -> None:
        """An empty schedule; the thread starts with the first penalty."""
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, ThreadDeathPenalty]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, deadline: float, penalty: ThreadDeathPenalty) -> None:
        """Fire `penalty` at `deadline` (time.monotonic()) unless it is cancelled first."""
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), penalty))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rq-job-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        """Sleep until the earliest deadline, fire it, repeat."""
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        penalty = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
            penalty.fire()


_watchdog = _Watchdog()


class ThreadDeathPenalty(BaseDeathPenalty):
    """Job timeout for jobs run in threads: raises the timeout exception in the job's own thread.

    Create it in the thread that runs the job (RQ does, in perform_job). See the module
    docstring for the limit: a thread blocked in a C call sees the exception when the call ends.
    """

    def __init__(self, timeout: float, exception: type[BaseException] = JobTimeoutException, **kwargs: Any):
        """Aim at the calling thread; nothing is armed until the `with` block starts."""
        super().__init__(timeout, exception, **kwargs)
        self._thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._exception = _with_message(exception, f"Task exceeded maximum timeout value ({timeout} seconds)")
        self.cancelled = False
        self._fired = False

    def setup_death_penalty(self) -> None:
        """Arm the watchdog (timeouts <= 0 mean no timeout)."""
        if self._timeout is not None and self._timeout > 0:
            _watchdog.schedule(time.monotonic() + self._timeout, self)

    def fire(self) -> None:
        """Raise the timeout in the job's thread unless the job already left the `with` block."""
        with self._lock:
            if self.cancelled:
                return
            self._fired = True
            _async_raise(self._thread_id, self._exception)

    def cancel_death_penalty(self) -> None:
        """Disarm; if the penalty fired but was not raised yet, withdraw it."""
        with self._lock:
            self.cancelled = True
            if self._fired:
                _async_raise(self._thread_id, None)


# --- is a worker (process) alive? ---------------------------------------------------------------


def worker_is_dead(connection: Redis, worker_name: str | None, cache: dict[str, bool] | None = None) -> bool:
    """True when the RQ worker `worker_name` is certainly gone (its jobs are abandoned).

    Certain means: its registration expired (no heartbeat for `liveness_ttl` seconds), it
    registered its death, or it ran on this machine and its process no longer exists (or the pid
    now belongs to a younger process, as after a container restart). A live worker on another
    machine keeps its registration fresh with heartbeats, so this is False for it.
    """
    if not worker_name:
        return False
    if cache is not None and worker_name in cache:
        return cache[worker_name]
    key = Worker.redis_worker_namespace_prefix + worker_name
    hostname, pid, death, birth = (
        v.decode() if isinstance(v, bytes) else v
        for v in connection.hmget(key, "hostname", "pid", "death", "birth")
    )
    if hostname is None and pid is None:
        dead = True  # the registration expired: no heartbeat within its TTL
    elif death:
        dead = True  # it shut down; a job still STARTED under it is not running
    elif hostname != socket.gethostname() or not pid:
        dead = False
    else:
        born = None
        if birth:
            with contextlib.suppress(ValueError):
                from rq.utils import utcparse

                born = utcparse(birth).timestamp()
        dead = not process_is_alive(int(pid), born)
    if cache is not None:
        cache[worker_name] = dead
    return dead


def take_over_stale_lock(connection: Redis, lock_key: str, token_of: Any = None) -> bool:
    """Delete `lock_key` when its owner is a dead process of this machine; True if deleted.

    Locks (RQ's scheduler lock, the cron lock) are saved with Redis's data and have TTLs of up to
    a minute: without this a restart (or a replacement for a killed worker) waits that long.
    `token_of` extracts the `owner_token` from a lock value that holds more.
    """
    raw = connection.get(lock_key)
    if raw is None:
        return False
    holder = raw.decode() if isinstance(raw, bytes) else raw
    if not owner_is_dead(token_of(holder) if token_of else holder):
        return False
    deleted = release_lock(connection, lock_key, holder)
    if deleted:
        log.info("took over lock %s from %s, a process that is gone", lock_key, holder)
    return bool(deleted)


@contextlib.contextmanager
def reaping(connection: Redis, registry: StartedJobRegistry) -> Iterator[None]:
    """Hold the lock under which abandoned jobs of `registry` are expired and cleaned up.

    The reaper of every worker and the sweep both hand abandoned jobs to RQ's cleanup, which
    reads the expired entries, handles those still STARTED, then deletes every entry expired by
    then: an entry expired by another process in between was deleted unhandled (its job stayed
    STARTED for good), and two cleanups at once retried one job twice. One at a time, neither.
    """
    key = f"{registry.key}:reaping"
    token = owner_token()
    deadline = time.monotonic() + REAPING_LOCK_TTL
    while not connection.set(key, token, nx=True, ex=REAPING_LOCK_TTL):
        if take_over_stale_lock(connection, key):
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} stayed held for {REAPING_LOCK_TTL} s")
        time.sleep(0.02)
    try:
        yield
    finally:
        release_lock(connection, key, token)


def expire_abandoned(connection: Redis, job: Job, serializer: Any = JobSerializer) -> None:
    """Hand `job`, STARTED by a worker known to be dead, to RQ's abandoned-job handling now.

    Its entries in StartedJobRegistry are expired so that RQ's cleanup retries it (or fails it
    when no retries are left) and frees its RateLimit slot. A job left STARTED with no entry at
    all (its worker died between the two) gets one, or it would never run again.
    """
    registry = StartedJobRegistry(job.origin, connection=connection, serializer=serializer)
    with reaping(connection, registry):
        if job.get_status(refresh=True) != JobStatus.STARTED:
            return  # someone handled it meanwhile
        prefix = f"{job.id}:".encode()
        members = [m for m in connection.zrange(registry.key, 0, -1) if m.startswith(prefix)]
        connection.zadd(registry.key, dict.fromkeys(members or [f"{job.id}:abandoned"], 0))
        registry.cleanup(timestamp=current_timestamp())


def run_now(connection: Redis, job_id: str, serializer: Any = JobSerializer) -> bool:
    """If RQ scheduled job `job_id` for later (a retry's backoff), enqueue it now; True if so.

    ZREM from the scheduled registry decides between this and a scheduler moving it at the same
    moment: only the one that removed it enqueues it.
    """
    try:
        job = Job.fetch(job_id, connection=connection, serializer=serializer)
    except NoSuchJobError:
        return False
    if job.get_status(refresh=False) != JobStatus.SCHEDULED:
        return False
    queue = Queue(job.origin, connection=connection, serializer=serializer)
    if not queue.scheduled_job_registry.remove(job):
        return False
    queue.enqueue_job(job)
    return True


# --- RQ's scheduler in a thread ---------------------------------------------------------------


class ThreadScheduler(RQScheduler):
    """RQ's scheduler (moves due scheduled jobs and Retry intervals to their queue) in a thread.

    Unlike RQ's forked scheduler, every worker runs this thread: the one holding the queue's
    scheduler lock moves due jobs, the others stand by and try for the lock every few seconds
    (taking it over at once from a dead process of this machine), so a retry never waits for a
    lock TTL after a restart or a crash. Redis outages are survived (see RedisOutage).
    """

    # Seconds a standby scheduler waits between attempts to take the lock.
    standby_interval = 2.0

    def __init__(self, *args: Any, outage: RedisOutage | None = None, **kwargs: Any) -> None:
        """RQ's scheduler with a name that says which process holds its locks."""
        kwargs.setdefault("name", owner_token())
        super().__init__(*args, **kwargs)
        self.outage = outage or RedisOutage("scheduler", self.log)
        self._wake = threading.Event()

    def _install_signal_handlers(self) -> None:
        """The worker's main thread owns the signals; stop() ends this thread."""

    def acquire_locks(self, auto_start: bool = False) -> set[str]:
        """RQ's lock acquisition, after removing locks whose holder is a dead process of this machine."""
        for name in self._queue_names - self._acquired_locks:
            take_over_stale_lock(self.connection, self.get_locking_key(name))
        return super().acquire_locks(auto_start=False)

    def start(self) -> threading.Thread:
        """Run the scheduler loop in a daemon thread (RQ forks a process here)."""
        self._status = self.Status.STARTED
        self._stop_requested = False
        self._wake.clear()
        thread = threading.Thread(target=self._run, name="rq-scheduler", daemon=True)
        self._process = thread
        thread.start()
        return thread

    def _run(self) -> None:
        """The scheduler loop until stopped: never ends on an error, Redis outages included."""
        registered = False
        last_try = 0.0
        while not self._stop_requested:
            try:
                if not registered:
                    self.register_birth()
                    registered = True
                if (
                    self._acquired_locks != self._queue_names
                    and time.monotonic() - last_try >= self.standby_interval
                ):
                    last_try = time.monotonic()
                    self.acquire_locks()
                if self._acquired_locks:
                    self.heartbeat()
                    self.enqueue_scheduled_jobs()
                else:
                    self.save()  # keep our own registration alive while standing by
                self.outage.ok()
                wait = self.interval
            except REDIS_DOWN_ERRORS as error:
                wait = self.outage.failed(error)
                # After an outage the locks may be gone (a Redis restart): ask again.
                self._acquired_locks = set()
                self._scheduled_job_registries = []
            except Exception:
                self.log.exception("Scheduler: a turn failed; trying again")
                wait = 5.0
            self._wake.wait(wait)
        try:
            self.stop()  # releases our locks, so the next start takes them at once
        except REDIS_DOWN_ERRORS:
            self.log.warning("Scheduler: Redis unreachable at shutdown; its locks expire on their own")

    def stop_thread(self, timeout: float = 5.0) -> None:
        """Ask the loop to stop (it releases its locks) and wait for it."""
        self._stop_requested = True
        self._wake.set()
        if self._process is not None and self._process is not threading.current_thread():
            self._process.join(timeout)


# --- the worker -------------------------------------------------------------------------------


@dataclass
class _InFlight:
    """One job running in a thread of this worker."""

    job: Job
    queue: Queue
    execution: Execution
    thread: threading.Thread
    overdue_logged: bool = False


class PromptCommandChannel(BaseWorker):
    """An RQ worker whose command-channel thread polls every second, so its shutdown is prompt."""

    def subscribe(self) -> None:
        """RQ's command channel (stop-job, shutdown), its listening thread polling every second.

        RQ polls every 60 s, and redis-py 8's `PubSubWorkerThread.stop()` joins the thread with no
        bound: when the unsubscribe at shutdown is read before the thread sees it must stop, its
        next poll waits for a subscription for the full 60 s, and SIGTERM took a minute to end an
        idle worker. With a 1 s poll a shutdown waits at most that second.
        """
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_POLL_SECONDS, daemon=True, exception_handler=self._pubsub_exception_handler
        )


class ThreadPoolWorker(PromptCommandChannel, SimpleWorker):
    """An RQ worker running up to `concurrency` jobs at once, each in its own thread."""

    death_penalty_class = ThreadDeathPenalty
    # Seconds the main thread blocks in one BLMOVE; bounds how long a stop request waits.
    dequeue_poll_interval = 1
    # Seconds a cold shutdown waits for job threads to record their interruption.
    cold_shutdown_grace = 5.0
    # Seconds a job may sit popped but not started before it counts as its dead worker's.
    stuck_after = 5.0

    def __init__(
        self,
        queues: str | Queue | Sequence[str] | Sequence[Queue],
        name: str | None = None,
        *args: Any,
        concurrency: int = 10,
        maintenance_interval: int = 60,
        heartbeat_interval: float = 5.0,
        reap_interval: float = 2.0,
        **kwargs: Any,
    ):
        """Like RQ's workers, plus `concurrency`: how many jobs may be in flight at once.

        `heartbeat_interval`: seconds between heartbeats; the worker's registration lives three
        of them, so a worker on another machine that stops beating counts as dead that soon.
        `reap_interval`: seconds between looks for jobs abandoned by dead workers.
        """
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError("concurrency must be an integer of at least 1")
        self.concurrency = concurrency
        # Jobs are JSON (gateway.queue.JobSerializer) unless told otherwise: RQ's default pickle
        # would let anyone who can write to Redis run code here.
        kwargs.setdefault("serializer", JobSerializer)
        super().__init__(queues, name, *args, maintenance_interval=maintenance_interval, **kwargs)
        self.heartbeat_interval = max(
            0.2, min(float(heartbeat_interval), float(self.job_monitoring_interval))
        )
        # Three missed heartbeats, and never under 5 s: a busy machine may delay one a little.
        self.liveness_ttl = max(5, int(self.heartbeat_interval * 3 + 0.999))
        self.reap_interval = reap_interval
        self._last_reap = 0.0
        self.outage = RedisOutage(f"Worker {self.name}", self.log)
        self._slots = threading.BoundedSemaphore(concurrency)
        # Guards _inflight and the busy/idle state written to Redis; _done is notified per job end.
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._inflight: dict[str, _InFlight] = {}
        # Held while heartbeating, and by a job thread dropping its execution, so a heartbeat
        # never re-creates the execution hash of a job that just finished.
        self._heartbeat_lock = threading.Lock()
        self._beating: dict[str, _InFlight] = {}
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._cold_stop = False
        self._previous_handlers: dict[int, Any] = {}

    # -- RQ hooks --

    @property
    def connection_timeout(self) -> int:
        """Socket timeout for Redis calls: the main thread never blocks long, so neither may Redis."""
        return self.dequeue_poll_interval + 29

    def serialize(self) -> dict:
        """RQ's worker hash, plus the concurrency (for `rq info`-style inspection)."""
        data = super().serialize()
        data["concurrency"] = self.concurrency
        return data

    def refresh(self) -> None:
        """RQ's refresh, plus the concurrency a running worker recorded."""
        super().refresh()
        raw = self.connection.hget(self.key, "concurrency")
        if raw is not None:
            self.concurrency = int(raw)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """The forking Worker's rule (min(time left, monitoring interval) + 60 s), never below 60 s."""
        return max(60, BaseWorker.get_heartbeat_ttl(self, job, working_time))

    def cleanup_execution(self, job: Job, pipeline: Any, execution: Execution | None = None) -> None:
        """Stop heartbeating the execution before RQ deletes it (see _heartbeat_lock)."""
        if execution is not None:
            with self._heartbeat_lock:
                self._beating.pop(execution.id, None)
        super().cleanup_execution(job, pipeline, execution)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Register the execution (main thread) and start the job's thread; returns at once."""
        with self._lock:
            execution = self.prepare_execution(job)  # StartedJobRegistry + state busy
            thread = threading.Thread(
                target=self._run_job, args=(job, queue, execution), name=f"rq-job-{job.id}", daemon=True
            )
            record = _InFlight(job=job, queue=queue, execution=execution, thread=thread)
            self._inflight[execution.id] = record
        with self._heartbeat_lock:
            self._beating[execution.id] = record
        try:
            thread.start()
        except BaseException:
            self._forget(execution.id)
            raise

    def _run_job(self, job: Job, queue: Queue, execution: Execution) -> None:
        """Body of a job's thread: RQ's perform_job, then per-thread cleanup and the slot back."""
        try:
            self.perform_job(job, queue, execution)
        except REDIS_DOWN_ERRORS as error:
            # The job ran (its own work is in the database); recording it in Redis failed. The
            # outage is logged once; the job's entries are settled by cleanup or the sweep.
            self.outage.failed(error)
            self.log.info("Worker %s: job %s ended while Redis was unreachable", self.name, job.id)
        except BaseException:
            # perform_job records failures itself; this is an exception raised inside its
            # failure handling (e.g. a cold shutdown landing there). The entry left in
            # StartedJobRegistry is then handled as abandoned by RQ's cleanup.
            self.log.exception("Worker %s: job %s ended outside RQ's handling", self.name, job.id)
        finally:
            _close_thread_database()
            self._forget(execution.id)

    def _forget(self, execution_id: str) -> None:
        """Drop a finished job from the bookkeeping, mark the worker idle if it was the last."""
        with self._heartbeat_lock:
            self._beating.pop(execution_id, None)
        with self._lock:
            self._inflight.pop(execution_id, None)
            if not self._inflight:
                try:
                    self.set_state(WorkerStatus.IDLE)
                except REDIS_DOWN_ERRORS as error:
                    self.outage.failed(error)  # logged once per outage
                except redis.exceptions.RedisError:
                    self.log.warning("Worker %s: could not record idle state", self.name)
            self._done.notify_all()
        self._slots.release()

    def in_flight(self) -> int:
        """How many jobs are running now."""
        with self._lock:
            return len(self._inflight)

    # -- heartbeats --

    def _heartbeat_loop(self) -> None:
        """Refresh the worker's and every in-flight execution's TTL until told to stop."""
        wait = 0.0  # the first beat at once: it also shortens the registration's TTL
        while not self._heartbeat_stop.wait(wait):
            wait = self.heartbeat_interval
            try:
                self.heartbeat_executions()
                self.outage.ok()
            except REDIS_DOWN_ERRORS as error:
                wait = min(self.heartbeat_interval, self.outage.failed(error))
            except Exception:
                self.log.warning("Worker %s: heartbeat failed", self.name, exc_info=True)

    def heartbeat_executions(self) -> None:
        """One pipeline: worker TTL, plus each execution's registry score, hash and job heartbeat."""
        worker_ttl = self.liveness_ttl
        with self._heartbeat_lock:
            records = list(self._beating.values())
            with self.connection.pipeline() as pipeline:
                self.heartbeat(worker_ttl, pipeline=pipeline)
                job_result_index = []
                for record in records:
                    job = record.job
                    working_time = (now() - job.started_at).total_seconds() if job.started_at else 0.0
                    self._log_if_overdue(record, working_time)
                    ttl = self.get_heartbeat_ttl(job, working_time)
                    record.execution.heartbeat(job.started_job_registry, ttl, pipeline=pipeline)
                    job_result_index.append(len(pipeline))
                    job.heartbeat(now(), ttl, pipeline=pipeline, xx=True)
                results = pipeline.execute()
            with self.connection.pipeline() as pipeline:
                # HSET answering 1 means the hash was gone and has just been re-created: the job
                # was deleted while running (or the worker key expired). Same repair as RQ's.
                for record, index in zip(records, job_result_index, strict=True):
                    if results[index] == 1:
                        pipeline.delete(record.job.key)
                if results[0] == 1:
                    # After a Redis restart that lost our registration: register again.
                    pipeline.hset(self.key, mapping=self.serialize())
                    pipeline.expire(self.key, worker_ttl)
                    register_worker_key(self, pipeline)
                if len(pipeline):
                    pipeline.execute()

    def _log_if_overdue(self, record: _InFlight, working_time: float) -> None:
        """Say once when a job's thread outlives its timeout by a minute (blocked in a C call)."""
        timeout = record.job.timeout
        if not record.overdue_logged and timeout and timeout > 0 and working_time > timeout + 60:
            record.overdue_logged = True
            self.log.error(
                "Worker %s: job %s runs %.0fs past its %ss timeout; its thread is blocked outside Python "
                "(a network call without timeout?) and cannot be interrupted",
                self.name,
                record.job.id,
                working_time - timeout,
                timeout,
            )

    # -- scheduler in a thread --

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """RQ's _start_scheduler, with the scheduler loop in a thread instead of a forked process."""
        self.scheduler = ThreadScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
            outage=self.outage,
        )
        if not burst:
            self.scheduler.start()  # holds the lock, or stands by for it
            return
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()
            finally:
                self.scheduler.release_locks()
                self.scheduler.register_death()

    def stop_scheduler(self) -> None:
        """Stop the scheduler thread (RQ's version signals a process)."""
        if isinstance(self.scheduler, ThreadScheduler):
            self.scheduler.stop_thread()

    # -- maintenance: registries, and jobs of dead workers --

    def run_maintenance_tasks(self) -> None:
        """RQ's registry cleaning; the scheduler thread restarts itself, so nothing to restart here."""
        thread = self.scheduler._process if isinstance(self.scheduler, ThreadScheduler) else None
        if thread is not None and not thread.is_alive():
            self.scheduler.start()
        self.clean_registries()
        self.clean_group_registries()

    def clean_registries(self) -> None:
        """RQ's registry cleaning of each queue, under a maintenance lock that names its owner.

        RQ's own lock holds "1" for 15 minutes, so a worker SIGKILLed while cleaning (each new
        worker cleans as it starts) would stop every worker from cleaning for that long: a
        RateLimit slot leaked by a kill would keep its chat waiting. A dead owner's lock is
        taken over at once, as for the scheduler and cron locks.
        """
        for queue in self.queues:
            key = queue.registry_cleaning_key
            token = owner_token()
            if not self.connection.set(key, token, nx=True, ex=MAINTENANCE_LOCK_TTL) and not (
                take_over_stale_lock(self.connection, key)
                and self.connection.set(key, token, nx=True, ex=MAINTENANCE_LOCK_TTL)
            ):
                continue
            try:
                self.log.info("Worker %s: cleaning registries for queue: %s", self.name, queue.name)
                clean_registries(queue, self._exc_handlers)
                clean_worker_registry(queue)
                queue.intermediate_queue.cleanup(self, queue)
            finally:
                release_lock(self.connection, key, token)
        self.last_cleaned_at = now()

    def _reap_unstarted(self, queue: Queue, started: set[str]) -> int:
        """Jobs popped into the intermediate list by a worker that died before starting them.

        A live worker starts a popped job within milliseconds; one still there `stuck_after`
        seconds after we first saw it goes through RQ's failure path (retried, or failed for the
        sweep to re-queue), as RQ's own IntermediateQueue.cleanup does after a minute or more.
        """
        intermediate = queue.intermediate_queue
        handled = 0
        for job_id in intermediate.get_job_ids():
            if job_id in started:
                continue
            seen_key = f"{intermediate.key}:unstarted:{job_id}"
            if self.connection.set(seen_key, time.time(), nx=True, ex=3600):
                continue  # first seen now
            if time.time() - float(self.connection.get(seen_key) or time.time()) < self.stuck_after:
                continue
            job = queue.fetch_job(job_id)
            if job is not None and job.get_status(refresh=False) == JobStatus.QUEUED:
                self.log.warning(
                    "Worker %s: job %s was popped by a worker that died; handed back", self.name, job_id
                )
                self.handle_job_failure(job, queue, exc_string="Its worker died before starting it.")
                run_now(self.connection, job_id, serializer=self.serializer)
                handled += 1
            intermediate.remove(job_id)
            self.connection.delete(seen_key)
        return handled

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        """RQ's command channel: wait out a Redis outage quietly (the outage logs it once)."""
        if isinstance(exc, REDIS_DOWN_ERRORS):
            time.sleep(self.outage.failed(exc))
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def reap_abandoned(self) -> int:
        """Hand the jobs of dead workers to RQ's abandoned-job handling now; returns how many.

        RQ itself notices an abandoned job only when its execution's heartbeat TTL (up to 90 s)
        has passed. Here a job in StartedJobRegistry whose worker is certainly dead (see
        `worker_is_dead`: its process is gone from this machine, or its registration, refreshed
        every heartbeat, expired) gets its entry expired, and RQ's StartedJobRegistry.cleanup
        retries it (or fails it when no retries are left) and frees its RateLimit slot. A retry
        that RQ scheduled after a backoff is enqueued at once: the death was no service's fault.
        """
        reaped = 0
        dead: dict[str, bool] = {self.name: False}
        for queue in self.queues:
            registry = StartedJobRegistry(queue.name, connection=self.connection, serializer=self.serializer)
            members = self.connection.zrange(registry.key, 0, -1)
            reaped += self._reap_unstarted(queue, {m.decode().rsplit(":", 1)[0] for m in members})
            if not members:
                continue
            by_job: dict[str, list[bytes]] = {}
            for member in members:
                by_job.setdefault(member.decode().rsplit(":", 1)[0], []).append(member)
            # Only the worker names: each execution's (set when it started, in the main thread)
            # and each job's, in one round trip.
            with self.connection.pipeline() as pipeline:
                for job_id, job_members in by_job.items():
                    pipeline.hget(f"rq:execution:{job_members[0].decode()}", "worker_name")
                    pipeline.hget(Job.key_for(job_id), "worker_name")
                names = pipeline.execute()
            abandoned = []
            for position, job_id in enumerate(by_job):
                raw = names[2 * position] or names[2 * position + 1]
                name = raw.decode() if isinstance(raw, bytes) else raw
                if name and worker_is_dead(self.connection, name, dead):
                    abandoned.append((job_id, name))
            if not abandoned:
                continue
            with reaping(self.connection, registry):
                for job_id, _ in abandoned:
                    # Killed after registering the execution but before the job's thread marked
                    # it STARTED: RQ's cleanup would skip it (and leave its RateLimit slot held).
                    job = queue.fetch_job(job_id)
                    if job is not None and job.get_status(refresh=False) == JobStatus.QUEUED:
                        reason = "Its worker died as it was starting it."
                        self.handle_job_failure(job, queue, exc_string=reason)
                expired = [member for job_id, _ in abandoned for member in by_job[job_id]]
                self.connection.zadd(registry.key, dict.fromkeys(expired, 0), xx=True)
                registry.cleanup(timestamp=current_timestamp(), exception_handlers=self._exc_handlers)
            for job_id, worker_name in abandoned:
                reaped += 1
                self.log.warning(
                    "Worker %s: job %s was abandoned by dead worker %s; handed back to RQ",
                    self.name,
                    job_id,
                    worker_name,
                )
                run_now(self.connection, job_id, serializer=self.serializer)
        return reaped

    # -- signals and commands --

    def _install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM ask for a warm shutdown; remember the handlers to restore later."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, self.request_stop)

    def _restore_signal_handlers(self) -> None:
        """Put back the handlers that were there before work() (matters when run in-process)."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def request_stop(self, signum: int, frame: Any) -> None:
        """Warm shutdown: stop dequeuing, finish jobs in flight. A later signal forces a stop.

        Only flags are set here: a signal handler that touched Redis or a lock could deadlock
        against the main thread it interrupted. The main loop acts on them within ~1 s.
        """
        self._shutdown_requested_date = now()
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self._stop_requested = True

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Cold shutdown: interrupt jobs in flight (ignored within 1 s of the first, like RQ)."""
        if self._shutdown_requested_date and (now() - self._shutdown_requested_date).total_seconds() < 1:
            return
        self._stop_requested = True
        self._cold_stop = True

    def request_stop_execution(self, execution_id: str) -> None:
        """RQ's stop-execution command: raise StopJobError in that job's thread."""
        with self._lock:
            record = self._inflight.get(execution_id)
        if record is None:
            self.log.warning("Worker %s: not running execution %s, command ignored", self.name, execution_id)
            return
        self._stopped_job_id = record.job.id
        if record.thread.ident is not None:
            _async_raise(record.thread.ident, _with_message(StopJobError, "Job stopped by user"))

    def handle_payload(self, message: dict) -> None:
        """RQ's commands; stop-job looks through every job in flight, not just the first."""
        from rq.command import parse_payload

        payload = parse_payload(message)
        if payload.get("command") == "stop-job":
            with self._lock:
                matches = [eid for eid, r in self._inflight.items() if r.job.id == payload.get("job_id")]
            if not matches:
                self.log.warning(
                    "Worker %s: not running job %s, command ignored", self.name, payload.get("job_id")
                )
            for execution_id in matches:
                self.request_stop_execution(execution_id)
            return
        super().handle_payload(message)

    # -- the main loop --

    def work(
        self,
        burst: bool = False,
        logging_level: str | None = None,
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        with_scheduler: bool = False,
        dequeue_strategy: DequeueStrategy = DequeueStrategy.DEFAULT,
    ) -> bool:
        """Dequeue whenever a slot is free and run each job in a thread; returns whether any ran.

        Burst mode quits once the queues are empty and nothing is in flight. Must be called from
        the main thread (it installs signal handlers, restored on return).
        """
        self.bootstrap(logging_level, date_format, log_format)
        self._dequeue_strategy = dequeue_strategy
        if with_scheduler:
            self._start_scheduler(burst, logging_level, date_format, log_format)
        self._install_signal_handlers()
        self._heartbeat_stop.clear()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name="rq-heartbeat", daemon=True
        )
        self._heartbeat_thread.start()
        self.log.info("Worker %s: running up to %d jobs at once in threads", self.name, self.concurrency)
        started = 0
        idle_since = time.monotonic()
        try:
            while True:
                try:
                    self.check_for_suspension(burst)
                    if self.should_run_maintenance_tasks:
                        self.run_maintenance_tasks()
                    if time.monotonic() - self._last_reap >= self.reap_interval:
                        self._last_reap = time.monotonic()
                        self.reap_abandoned()
                    self.outage.ok()
                    if self._stop_requested:
                        self.log.info("Worker %s: stopping on request", self.name)
                        break
                    if not self._slots.acquire(timeout=self.dequeue_poll_interval):
                        continue  # every slot busy; look at the stop flag again
                    result = self._dequeue(burst)
                    if result is None:
                        self._slots.release()
                        busy = self.in_flight()
                        if busy:
                            idle_since = time.monotonic()
                        if burst:
                            if not busy:
                                self.log.info("Worker %s: done, quitting", self.name)
                                break
                            with self._done:  # jobs in flight may still enqueue (retries, dependents)
                                self._done.wait(self.dequeue_poll_interval)
                        elif max_idle_time is not None and time.monotonic() - idle_since > max_idle_time:
                            self.log.info(
                                "Worker %s: idle for %d seconds, quitting", self.name, max_idle_time
                            )
                            break
                        continue
                    job, queue = result
                    try:
                        self._start_job(job, queue)
                    except BaseException:
                        self._slots.release()
                        raise
                    started += 1
                    idle_since = time.monotonic()
                    if max_jobs is not None and started >= max_jobs:
                        self.log.info("Worker %s: started %d jobs, quitting", self.name, started)
                        break
                except StopRequested:
                    break
                except REDIS_DOWN_ERRORS as error:
                    self._sleep(self.outage.failed(error))
                except Exception:
                    self.log.error(
                        "Worker %s: found an unhandled exception, quitting...", self.name, exc_info=True
                    )
                    break
        finally:
            try:
                self._drain()
            finally:
                self._heartbeat_stop.set()
                self._heartbeat_thread.join(timeout=5)
                try:
                    self.teardown()
                except REDIS_DOWN_ERRORS:
                    self.log.warning(
                        "Worker %s: Redis unreachable at shutdown; its registration expires on its own",
                        self.name,
                    )
                self._restore_signal_handlers()
        return bool(started)

    def _dequeue(self, burst: bool) -> tuple[Job, Queue] | None:
        """One dequeue attempt: non-blocking in burst mode, else a short blocking poll."""
        timeout = None if burst else self.dequeue_poll_interval
        try:
            result = self.queue_class.dequeue_any(
                self._ordered_queues,
                timeout,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        except DequeueTimeout:
            return None
        except REDIS_DOWN_ERRORS as error:
            self._sleep(self.outage.failed(error))
            return None
        self.outage.ok()
        if result is None:
            return None
        job, queue = result
        self.reorder_queues(reference_queue=queue)
        job.redis_server_version = self.get_redis_server_version()
        if self.log_job_description:
            self.log.info("Worker %s: %s: %s (%s)", self.name, queue.name, job.description, job.id)
        else:
            self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
        return result

    def _start_job(self, job: Job, queue: Queue) -> None:
        """execute_job, retried through a Redis outage: a dequeued job is never dropped here."""
        while True:
            try:
                self.execute_job(job, queue)
                return
            except REDIS_DOWN_ERRORS as error:
                wait = self.outage.failed(error)
            if self._stop_requested:
                # Left in the queue's intermediate list: RQ's cleanup (or the sweep) runs it later.
                self.log.warning("Worker %s: stopping before job %s could start", self.name, job.id)
                self._slots.release()
                return
            self._sleep(wait)

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up early on a stop request."""
        deadline = time.monotonic() + seconds
        while not self._stop_requested and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _drain(self) -> None:
        """Warm: wait for every job in flight. Cold: interrupt them, wait a little, leave the rest."""
        if self._shutdown_requested_date is not None:
            with contextlib.suppress(redis.exceptions.RedisError):
                self.set_shutdown_requested_date()
        waiting = self.in_flight()
        if waiting:
            self.log.info(
                "Worker %s: warm shutdown, waiting for %d job(s) in flight; signal again to stop at once",
                self.name,
                waiting,
            )
        while self.in_flight():
            if self._cold_stop:
                self._interrupt_jobs()
                return
            with self._done:
                self._done.wait(0.2)

    def _interrupt_jobs(self) -> None:
        """Raise ColdShutdownError in every job thread and give them a moment to record it."""
        with self._lock:
            records = list(self._inflight.values())
        self.log.warning("Worker %s: cold shutdown, interrupting %d job(s)", self.name, len(records))
        exc = _with_message(ColdShutdownError, "Worker cold shutdown interrupted the job")
        for record in records:
            if record.thread.ident is not None:
                _async_raise(record.thread.ident, exc)
        deadline = time.monotonic() + self.cold_shutdown_grace
        while self.in_flight() and time.monotonic() < deadline:
            with self._done:
                self._done.wait(0.1)
        left = self.in_flight()
        if left:
            self.log.warning(
                "Worker %s: %d job(s) did not stop; RQ's cleanup will treat them as abandoned",
                self.name,
                left,
            )


def _close_thread_database() -> None:
    """Close this thread's peewee connection (a pooled one goes back to the pool)."""
    try:
        from gateway.storage.db import database

        if database.obj is not None and not database.is_closed():
            database.close()
    except Exception:
        log.warning("could not close the job thread's database connection", exc_info=True)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m workers.pool`: a ThreadPoolWorker on explicit queues (tests, benchmarks)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Redis URL")
    parser.add_argument("--queue", action="append", required=True, help="queue name (repeatable)")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--name", default=None, help="worker name")
    parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    parser.add_argument("--no-scheduler", action="store_true", help="do not run RQ's scheduler")
    parser.add_argument("--job-monitoring-interval", type=int, default=30)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    connection = Redis.from_url(args.url)
    worker = ThreadPoolWorker(
        args.queue,
        name=args.name,
        connection=connection,
        concurrency=args.concurrency,
        job_monitoring_interval=args.job_monitoring_interval,
        serializer=JobSerializer,
    )
    worker.work(burst=args.burst, with_scheduler=not args.no_scheduler, logging_level=args.log_level.upper())


if __name__ == "__main__":
    main()
