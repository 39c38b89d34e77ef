"""`smsgw worker`: one process running the gateway's jobs in threads, plus its periodic jobs.

run_worker() wires the process together: logging, the settings jobs read (workers.context), the
database, Redis, a ThreadPoolWorker on the gateway's queue with RQ's scheduler (Retry intervals),
and RQ's CronScheduler enqueuing the periodic jobs from a daemon thread.

Periodic jobs are registered by dotted path, so this module never imports workers.jobs. When
several worker processes run, each has a cron thread but only the one holding a Redis lock
(`smsgw:cron-lock:<queue>`, refreshed every few seconds, TTL 15 s) enqueues; when it dies another
takes over once the lock expires, or at once when the holder was a process of this machine that
is gone. The jobs are idempotent anyway, so a rare duplicate is harmless. A Redis outage is
waited out (one log line when it starts, one when it ends; see gateway.queue.RedisOutage).
"""

from __future__ import annotations

import logging
import threading

from redis import Redis
from rq.cron import CronJob, CronScheduler
from rq.cron_job_registry import add as record_cron_run
from rq.defaults import DEFAULT_CRON_JOB_HISTORY_LIMIT, DEFAULT_CRON_JOB_HISTORY_TTL
from rq.job import Job
from rq.scripts import acquire_or_refresh_lock, release_lock

from gateway import metrics
from gateway.config import Settings
from gateway.logs import configure_logging, describe_setup, is_configured
from gateway.processes import owner_token
from gateway.queue import REDIS_DOWN_ERRORS, JobSerializer, RedisOutage, connect_redis, job_queue, queue_name
from gateway.storage import db
from workers import context
from workers.pool import ThreadPoolWorker, take_over_stale_lock

log = logging.getLogger(__name__)

# (dotted path, interval in seconds): the sweeps that keep conversations moving. The sweep's
# interval is the setting SWEEP_INTERVAL (see periodic_jobs).
PERIODIC_JOBS: tuple[tuple[str, int], ...] = (
    ("workers.jobs.sweep_unanswered", 15),
    ("workers.jobs.close_silent_chats", 60),
    ("workers.jobs.delete_expired_messages", 3600),  # RETENTION_DAYS
)
# A periodic run that takes longer than this is stopped by RQ (it will run again soon anyway).
PERIODIC_JOB_TIMEOUT = 120


class DottedCronJob(CronJob):
    """RQ's CronJob for a function named by dotted path (RQ's own enqueue needs the function)."""

    def enqueue(self, connection: Redis) -> Job:
        """Enqueue by dotted path and record the run in RQ's cron history, as CronJob.enqueue does."""
        queue = job_queue(self.queue_name, connection)
        with connection.pipeline() as pipeline:
            job = queue.enqueue(
                self.func_name, args=self.args, kwargs=self.kwargs, **self.job_options, pipeline=pipeline
            )
            assert job.enqueued_at is not None
            pipeline.zadd(self.job_history_key, {job.id: job.enqueued_at.timestamp()})
            pipeline.zremrangebyrank(self.job_history_key, 0, -(DEFAULT_CRON_JOB_HISTORY_LIMIT + 1))
            pipeline.expire(self.job_history_key, DEFAULT_CRON_JOB_HISTORY_TTL)
            record_cron_run(self.name, pipeline, enqueue_timestamp=job.enqueued_at.timestamp())
            pipeline.execute()
        log.debug("enqueued periodic job %s on %s", self.func_name, self.queue_name)
        return job


def periodic_jobs(settings: Settings) -> tuple[tuple[str, int], ...]:
    """PERIODIC_JOBS with the sweep at the configured interval."""
    sweep = max(1, int(settings.sweep_interval))
    return tuple(
        (path, sweep if path == "workers.jobs.sweep_unanswered" else interval)
        for path, interval in PERIODIC_JOBS
    )


class PeriodicJobs:
    """RQ's CronScheduler loop in a daemon thread, enqueuing only while it holds the cron lock."""

    lock_ttl = 15
    # Longest sleep between loop turns: the lock is refreshed (and a free lock noticed) this often.
    max_sleep = 4.0

    def __init__(
        self,
        connection: Redis,
        queue: str,
        jobs: tuple[tuple[str, int], ...] = PERIODIC_JOBS,
        outage: RedisOutage | None = None,
    ):
        """Register `jobs` (dotted path, interval seconds) for `queue`; nothing runs yet."""
        self.connection = connection
        self.queue = queue
        self.lock_key = f"smsgw:cron-lock:{queue}"
        self.outage = outage or RedisOutage("cron", log)
        # The lock's owner token names this process, so a successor can tell it is gone.
        self.scheduler = CronScheduler(connection=connection, name=f"{queue}|{owner_token()}")
        for path, interval in jobs:
            # CronScheduler.register() wants the function object; a dotted-path job is added directly.
            self.scheduler._cron_jobs.append(
                DottedCronJob(
                    queue_name=queue,
                    func_name=path,
                    interval=interval,
                    job_timeout=PERIODIC_JOB_TIMEOUT,
                    result_ttl=600,
                    failure_ttl=7 * 24 * 3600,
                )
            )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.holds_lock = False

    def start(self) -> None:
        """Start the cron thread."""
        self._thread = threading.Thread(target=self._run, name="rq-cron", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the cron thread and give up the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> float:
        """One turn: take or refresh the lock, enqueue what is due; returns seconds to sleep."""
        if not self.holds_lock:
            take_over_stale_lock(self.connection, self.lock_key, token_of=_cron_token)
        outcome = acquire_or_refresh_lock(self.connection, self.lock_key, self.scheduler.name, self.lock_ttl)
        was_holding, self.holds_lock = self.holds_lock, outcome in ("acquired", "refreshed")
        if self.holds_lock and not was_holding:
            log.info("cron: %s enqueues periodic jobs for %s", self.scheduler.name, self.queue)
        if self.holds_lock and self.scheduler.enqueue_jobs():
            self.scheduler.save()
        self.scheduler.heartbeat()
        return min(self.scheduler.calculate_sleep_interval(), self.max_sleep)

    def _run(self) -> None:
        """Loop until stopped; a Redis outage is waited out, other errors are logged and retried."""
        registered = False
        try:
            while not self._stop.is_set():
                try:
                    if not registered:
                        self.scheduler.register_birth()
                        registered = True
                    sleep = self.run_once()
                    self.outage.ok()
                except REDIS_DOWN_ERRORS as error:
                    sleep = self.outage.failed(error)
                    self.holds_lock = False  # a restarted Redis may have lost it; take it afresh
                except Exception:
                    log.warning("cron: turn failed; retrying", exc_info=True)
                    sleep = self.max_sleep
                self._stop.wait(sleep)
        finally:
            try:
                if self.holds_lock:
                    release_lock(self.connection, self.lock_key, self.scheduler.name)
                self.scheduler.register_death()
            except REDIS_DOWN_ERRORS:
                log.warning("cron: Redis unreachable at shutdown; the cron lock expires on its own")
            except Exception:
                log.warning("cron: could not unregister", exc_info=True)


def _cron_token(holder: str) -> str:
    """The process token inside a cron lock's owner ("<queue>|<token>")."""
    return holder.split("|", 1)[1] if "|" in holder else holder


def run_worker(settings: Settings, concurrency: int | None = None, burst: bool = False) -> None:
    """Run the gateway's worker until SIGTERM/SIGINT (or, with burst, until the queue is empty)."""
    if not is_configured():
        configure_logging(settings)
    if not settings.redis_url:
        raise SystemExit("REDIS_URL is not set: the worker needs Redis")
    db.open_from_settings(settings)
    log.info(describe_setup(settings, "worker"))
    context.configure(settings)
    metrics.init(settings)  # before any job counts anything
    connection = connect_redis(settings.redis_url)
    name = queue_name(settings)
    worker = ThreadPoolWorker(
        [name],
        connection=connection,
        concurrency=concurrency or settings.worker_concurrency,
        serializer=JobSerializer,
        heartbeat_interval=settings.worker_heartbeat_interval,
    )
    periodic = None
    if not burst:
        periodic = PeriodicJobs(connection, name, periodic_jobs(settings), outage=worker.outage)
        periodic.start()
    try:
        worker.work(
            with_scheduler=True, burst=burst, logging_level=logging.getLevelName(log.getEffectiveLevel())
        )
    finally:
        if periodic is not None:
            periodic.stop()
        if db.database.obj is not None and not db.database.is_closed():
            db.database.close()
