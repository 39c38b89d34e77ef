"""ThreadPoolWorker on a real Redis: concurrency, RQ's registries, Retry, RateLimit, timeouts, shutdowns.

Workers run as real processes (`python -m workers.pool`) so signals and SIGKILL are the real thing;
the database/context test runs `run_worker` in-process. Test jobs live in tests/jobs_for_tests.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from rq import Queue, Retry
from rq.job import JobStatus
from rq.rate_limit import RateLimit, RateLimitRegistry
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from gateway.queue import fetch_job, job_queue
from tests.conftest import ROOT, wait_for
from workers.pool import ThreadPoolWorker

JOBS = "tests.jobs_for_tests"


class PoolProcess:
    """`python -m workers.pool` as a subprocess on one queue."""

    def __init__(self, url: str, queue: str, log_path: Path, concurrency: int = 10, burst: bool = False):
        """Start the worker process."""
        self.log_path = log_path
        self.name = f"test-{uuid.uuid4().hex[:8]}"
        args = [sys.executable, "-m", "workers.pool", "--url", url, "--queue", queue]
        args += ["--concurrency", str(concurrency), "--name", self.name, "--job-monitoring-interval", "1"]
        if burst:
            args.append("--burst")
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, cwd=str(ROOT), env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def signal(self, signum: int) -> None:
        """Send a signal to the worker."""
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        """Wait for the process to exit; its exit code."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise AssertionError(f"worker did not exit within {timeout}s:\n{self.log()}") from error

    def stop(self) -> None:
        """Make sure the process is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        """What the worker printed."""
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def queue(redis_conn) -> Queue:
    """A fresh queue on the test Redis."""
    return job_queue(f"pool-{uuid.uuid4().hex[:8]}", redis_conn)


@pytest.fixture
def start_worker(redis_server, queue, tmp_path):
    """Start worker processes on `queue`; all are stopped after the test."""
    started: list[PoolProcess] = []

    def start(**kwargs) -> PoolProcess:
        proc = PoolProcess(redis_server.url, queue.name, tmp_path / f"worker{len(started)}.log", **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def records(redis_conn, key: str) -> list[dict]:
    """The JSON records a test job appended to a Redis list."""
    return [json.loads(item) for item in redis_conn.lrange(key, 0, -1)]


def test_jobs_run_at_once_in_threads_and_rq_sees_them(redis_conn, queue, start_worker):
    """N sleeping jobs are all in flight together: StartedJobRegistry, worker executions, busy state."""
    n = 12
    jobs = [queue.enqueue(f"{JOBS}.sleep_then_return", 1.5, i, "runs") for i in range(n)]
    began = time.monotonic()
    worker = start_worker(concurrency=n)

    registry = StartedJobRegistry(queue=queue)
    wait_for(lambda: len(registry.get_job_ids(cleanup=False)) == n, message="all jobs in StartedJobRegistry")
    [seen] = ThreadPoolWorker.all(connection=redis_conn)
    assert seen.name == worker.name
    assert seen.get_state() == "busy"
    assert seen.concurrency == n
    assert len(seen.get_current_executions()) == n
    assert {e.job_id for e in seen.get_current_executions()} == {j.id for j in jobs}

    finished = FinishedJobRegistry(queue=queue)
    wait_for(lambda: len(finished) == n, message="all jobs finished")
    elapsed = time.monotonic() - began
    assert [fetch_job(j.id, redis_conn).return_value() for j in jobs] == list(range(n))
    # Every run overlapped every other: they ran at the same time, in different threads.
    runs = records(redis_conn, "runs")
    assert max(r["start"] for r in runs) < min(r["end"] for r in runs)
    assert len({r["thread"] for r in runs}) == n
    assert elapsed < n * 1.5 / 2  # loose: one after another would take n * 1.5 s
    wait_for(lambda: seen.connection.hget(seen.key, "state") == b"idle", message="worker idle again")
    assert len(seen.get_current_executions(refresh=True)) == 0
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_heartbeats_keep_a_long_job_in_started_registry(redis_conn, queue, start_worker):
    """While the main thread sits in dequeue, the heartbeat thread pushes the execution's expiry on."""
    job = queue.enqueue(f"{JOBS}.sleep_then_return", 4, "long", "hb", job_timeout=600)
    worker = start_worker(concurrency=2)  # --job-monitoring-interval 1
    registry = StartedJobRegistry(queue=queue)
    wait_for(lambda: registry.get_job_ids(cleanup=False) == [job.id], message="job in flight")
    [(member, first)] = redis_conn.zrange(registry.key, 0, -1, withscores=True)
    assert first <= time.time() + 90 + 1  # the forking Worker's TTL rule: min(timeout, 30 s) + 60 s
    wait_for(lambda: redis_conn.zscore(registry.key, member) > first, timeout=10, message="heartbeat")
    wait_for(lambda: fetch_job(job.id, redis_conn).get_status() == JobStatus.FINISHED, message="done")
    assert redis_conn.zscore(registry.key, member) is None
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_stop_job_command_stops_only_that_job(redis_conn, queue, start_worker):
    """RQ's stop-job command interrupts the named job's thread (STOPPED), the others run on."""
    from rq.command import send_stop_job_command

    doomed = queue.enqueue(f"{JOBS}.sleep_then_return", 30, "never", "stop")
    other = queue.enqueue(f"{JOBS}.sleep_then_return", 2, "kept", "stop")
    worker = start_worker(concurrency=4)
    wait_for(lambda: redis_conn.llen("stop:started") == 2, message="jobs started")
    send_stop_job_command(redis_conn, doomed.id)
    wait_for(lambda: fetch_job(doomed.id, redis_conn).get_status() == JobStatus.STOPPED, message="stop")
    assert doomed.id in FailedJobRegistry(queue=queue)
    wait_for(lambda: fetch_job(other.id, redis_conn).return_value() == "kept", message="other done")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_failures_and_timeouts_land_in_failed_registry(redis_conn, queue, start_worker):
    """A raising job and a job over its timeout are failed with their tracebacks; others still finish."""
    bad = queue.enqueue(f"{JOBS}.fail_always", "the model said no")
    slow = queue.enqueue(f"{JOBS}.sleep_then_return", 30, job_timeout=1)
    good = queue.enqueue(f"{JOBS}.sleep_then_return", 0.1, "fine")
    worker = start_worker(concurrency=4, burst=True)
    assert worker.wait() == 0

    failed = FailedJobRegistry(queue=queue)
    assert set(failed.get_job_ids()) == {bad.id, slow.id}
    bad_result = fetch_job(bad.id, redis_conn).latest_result()
    assert "Traceback" in bad_result.exc_string
    assert "ValueError: the model said no" in bad_result.exc_string
    slow_job = fetch_job(slow.id, redis_conn)
    assert slow_job.get_status() == JobStatus.FAILED
    assert "JobTimeoutException: Task exceeded maximum timeout value (1 seconds)" in (
        slow_job.latest_result().exc_string
    )
    assert fetch_job(good.id, redis_conn).return_value() == "fine"
    assert len(StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)) == 0


def test_retry_with_interval_goes_through_the_scheduler(redis_conn, queue, start_worker):
    """Retry(max=3, interval=1): two failures are rescheduled by RQ's scheduler, the third run succeeds."""
    job = queue.enqueue(
        f"{JOBS}.fail_n_times", "attempts", 2, "third time lucky", retry=Retry(max=3, interval=1)
    )
    worker = start_worker(concurrency=2)
    wait_for(
        lambda: fetch_job(job.id, redis_conn).get_status() == JobStatus.FINISHED,
        timeout=30,
        message="retried job finishes",
    )
    job = fetch_job(job.id, redis_conn)
    assert job.return_value() == "third time lucky"
    assert int(redis_conn.get("attempts")) == 3
    assert job.retries_left == 1
    assert len(FailedJobRegistry(queue=queue)) == 0
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_rate_limit_runs_one_key_in_order_and_other_keys_in_parallel(redis_conn, queue, start_worker):
    """Five jobs of one chat run one at a time, oldest first, while other chats' jobs run alongside."""
    # RQ 3.0 stamps waiting jobs with whole seconds and breaks ties by job id, so jobs of one key
    # enqueued within the same second run in job-id order; ids that sort like the enqueue order
    # make "oldest first" hold here (gateway reply ids need the same property).
    chat = [
        queue.enqueue(
            f"{JOBS}.sleep_then_return",
            0.3,
            i,
            "chat-a",
            job_id=f"chat-a-{i:04d}",
            rate_limit=RateLimit("chat:a", concurrency=1),
        )
        for i in range(5)
    ]
    others = [
        queue.enqueue(f"{JOBS}.sleep_then_return", 1.0, k, "others", rate_limit=RateLimit(f"chat:{k}", 1))
        for k in ("b", "c", "d", "e")
    ]
    assert [fetch_job(j.id, redis_conn).get_status() for j in chat[1:]] == [JobStatus.RATE_LIMITED] * 4
    worker = start_worker(concurrency=10, burst=True)
    assert worker.wait(timeout=40) == 0

    runs = records(redis_conn, "chat-a")
    assert [r["value"] for r in runs] == [0, 1, 2, 3, 4]
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert earlier["end"] <= later["start"], "two jobs of one rate-limit key overlapped"
    other_runs = records(redis_conn, "others")
    assert len(other_runs) == 4
    assert max(r["start"] for r in other_runs) < min(r["end"] for r in other_runs)
    # The other chats ran while chat a's queue was still being worked through.
    assert min(r["end"] for r in other_runs) > runs[0]["start"]
    assert len(FinishedJobRegistry(queue=queue)) == 9
    assert all(fetch_job(j.id, redis_conn).get_status() == JobStatus.FINISHED for j in chat + others)


def test_warm_shutdown_lets_the_job_in_flight_finish(redis_conn, queue, start_worker):
    """SIGTERM mid-job: the job finishes and is recorded, nothing new is taken, the worker exits 0."""
    job = queue.enqueue(f"{JOBS}.sleep_then_return", 2, "done anyway", "warm")
    worker = start_worker(concurrency=4)
    wait_for(lambda: redis_conn.llen("warm:started") == 1, message="job started")
    worker.signal(signal.SIGTERM)
    [seen] = ThreadPoolWorker.all(connection=redis_conn)
    wait_for(lambda: seen.shutdown_requested_date is not None, message="worker acknowledges the shutdown")
    later = queue.enqueue(f"{JOBS}.sleep_then_return", 0, "too late")
    assert worker.wait() == 0
    assert fetch_job(job.id, redis_conn).return_value() == "done anyway"
    assert fetch_job(later.id, redis_conn).get_status() == JobStatus.QUEUED
    assert ThreadPoolWorker.all(connection=redis_conn) == []


def test_second_signal_interrupts_jobs_and_records_them(redis_conn, queue, start_worker):
    """A second SIGTERM is a cold shutdown: the job is interrupted and failed (or retried) by RQ."""
    plain = queue.enqueue(f"{JOBS}.sleep_then_return", 60, None, "cold")
    retried = queue.enqueue(f"{JOBS}.sleep_then_return", 60, None, "cold", retry=Retry(max=1))
    worker = start_worker(concurrency=4)
    wait_for(lambda: redis_conn.llen("cold:started") == 2, message="jobs started")
    worker.signal(signal.SIGTERM)
    time.sleep(1.2)  # RQ ignores a second signal within 1 s of the first
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    plain = fetch_job(plain.id, redis_conn)
    assert plain.get_status() == JobStatus.FAILED
    assert "ColdShutdownError" in plain.latest_result().exc_string
    retried = fetch_job(retried.id, redis_conn)
    assert retried.get_status() == JobStatus.QUEUED
    assert retried.retries_left == 0
    assert len(StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)) == 0


def test_sigkill_leaves_jobs_that_rq_cleanup_retries_or_fails(redis_conn, queue, start_worker):
    """A SIGKILLed worker's jobs stay STARTED; RQ's StartedJobRegistry cleanup (after the heartbeat
    TTL) retries the one with retries left, fails the other, and frees their RateLimit slots."""
    with_retry = queue.enqueue(
        f"{JOBS}.slow_first_time", "runs:retry", 60, retry=Retry(max=1), rate_limit=RateLimit("chat:k", 1)
    )
    behind = queue.enqueue(f"{JOBS}.sleep_then_return", 0, "next in chat", rate_limit=RateLimit("chat:k", 1))
    no_retry = queue.enqueue(f"{JOBS}.slow_first_time", "runs:plain", 60)
    worker = start_worker(concurrency=4)
    registry = StartedJobRegistry(queue=queue)
    # Both jobs counted as started AND marked so (RQ records the status just after the registry).
    wait_for(
        lambda: (
            len(registry.get_job_ids(cleanup=False)) == 2
            and all(
                fetch_job(job.id, redis_conn).get_status() == JobStatus.STARTED
                for job in (with_retry, no_retry)
            )
        ),
        message="both jobs in flight",
    )
    worker.signal(signal.SIGKILL)
    worker.wait()

    # Nothing was recorded: the jobs look like they are still running...
    for job_id in (with_retry.id, no_retry.id):
        assert fetch_job(job_id, redis_conn).get_status() == JobStatus.STARTED
    assert fetch_job(behind.id, redis_conn).get_status() == JobStatus.RATE_LIMITED
    # ...until their execution's heartbeat TTL (<= 90 s) has passed; a live worker's maintenance
    # then runs this cleanup. Passing a later timestamp stands in for the wait.
    registry.cleanup()
    assert len(registry.get_job_ids(cleanup=False)) == 2  # not expired yet: left alone
    registry.cleanup(timestamp=time.time() + 120)

    retried = fetch_job(with_retry.id, redis_conn)
    assert retried.get_status() == JobStatus.QUEUED
    assert retried.retries_left == 0
    failed = fetch_job(no_retry.id, redis_conn)
    assert failed.get_status() == JobStatus.FAILED
    assert "AbandonedJobError" in failed.latest_result().exc_string
    assert no_retry.id in FailedJobRegistry(queue=queue)

    # A new worker re-runs the retried job; when it ends, the chat's next job is promoted and runs.
    again = start_worker(concurrency=4, burst=True)
    assert again.wait() == 0
    assert fetch_job(with_retry.id, redis_conn).return_value() == "second run"
    assert fetch_job(behind.id, redis_conn).return_value() == "next in chat"


def test_a_cleaning_lock_left_by_a_killed_worker_is_taken_over_and_frees_a_leaked_slot(
    redis_conn, queue, start_worker
):
    """A worker SIGKILLed while cleaning RQ's registries leaves its lock (RQ's lasts 15 minutes), and
    one killed just after a job's success left that job holding its chat's RateLimit slot: the next
    worker takes the lock over at once, and its cleaning frees the slot so the chat's next job runs."""
    first = queue.enqueue(f"{JOBS}.sleep_then_return", 0, "first", rate_limit=RateLimit("chat:m", 1))
    assert start_worker(burst=True).wait() == 0
    assert fetch_job(first.id, redis_conn).get_status() == JobStatus.FINISHED
    slots = RateLimitRegistry("chat:m", connection=redis_conn)
    redis_conn.zadd(slots.allowed_key, {first.id: time.time()})  # the slot it never released
    redis_conn.hset(slots.config_key, "concurrency", 1)
    redis_conn.sadd(slots.rl_keys_key, slots.key)
    behind = queue.enqueue(f"{JOBS}.sleep_then_return", 0, "behind", rate_limit=RateLimit("chat:m", 1))
    assert fetch_job(behind.id, redis_conn).get_status() == JobStatus.RATE_LIMITED
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock = f"{socket.gethostname()}|{gone.pid}|{time.time():.0f}|deadbeef"  # a process that is gone
    redis_conn.set(queue.registry_cleaning_key, lock, ex=899)

    assert start_worker(burst=True).wait() == 0
    assert fetch_job(behind.id, redis_conn).return_value() == "behind"
    assert redis_conn.get(queue.registry_cleaning_key) is None  # released after cleaning


def test_run_worker_configures_jobs_and_closes_their_database_connections(redis_server, redis_conn, tmp_path):
    """run_worker (burst, in-process): jobs see the configured settings; each thread's DB handle is closed."""
    import sqlite3

    from gateway.config import Settings
    from gateway.queue import queue_name
    from tests import jobs_for_tests
    from workers import context
    from workers.runner import run_worker

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'worker.sqlite3'}",
        redis_url=redis_server.url,
        queue_prefix=f"ctx-{uuid.uuid4().hex[:6]}",
        worker_concurrency=5,
    )
    q = job_queue(queue_name(settings), redis_conn)  # the gateway's worker reads and writes JSON
    field = q.enqueue(f"{JOBS}.settings_field", "queue_prefix")
    touches = [q.enqueue(f"{JOBS}.touch_database", "db") for _ in range(5)]
    jobs_for_tests._CONNECTIONS.clear()
    try:
        run_worker(settings, burst=True)
    finally:
        context.configure(None)
    assert fetch_job(field.id, redis_conn).return_value() == settings.queue_prefix
    assert all(fetch_job(j.id, redis_conn).return_value() is True for j in touches)
    assert len(jobs_for_tests._CONNECTIONS) == 5
    for conn in jobs_for_tests._CONNECTIONS:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")  # closed by the worker after the job


def test_periodic_jobs_are_enqueued_by_one_scheduler(redis_conn, queue):
    """Two cron threads share a lock: only the holder enqueues; due jobs go on the queue by dotted path."""
    from gateway.queue import job_queue
    from workers.runner import PeriodicJobs

    queue = job_queue(queue.name, redis_conn)  # the cron thread enqueues JSON
    jobs = ((f"{JOBS}.tick", 1),)
    first = PeriodicJobs(redis_conn, queue.name, jobs=jobs)
    second = PeriodicJobs(redis_conn, queue.name, jobs=jobs)
    first.run_once()
    second.run_once()
    assert first.holds_lock and not second.holds_lock
    assert len(queue.get_job_ids()) == 1
    assert queue.get_jobs()[0].func_name == f"{JOBS}.tick"
    first.start()
    second.start()
    try:
        wait_for(lambda: len(queue.get_job_ids()) >= 3, timeout=10, message="periodic job enqueued again")
    finally:
        first.stop()
        second.stop()
    assert not redis_conn.exists(first.lock_key)  # released on stop
    assert {job.func_name for job in queue.get_jobs()} == {f"{JOBS}.tick"}


def test_shutdown_does_not_wait_out_the_command_channels_poll(redis_conn, queue):
    """The command channel's thread, left waiting for a subscription, lets a shutdown go in a second.

    This is the state a SIGTERM can meet: the unsubscribe at teardown was read before the thread
    was told to stop, so its next poll waits for a subscription that never comes. With RQ's 60 s
    poll and redis-py 8 joining that thread without a bound, an idle worker took a minute to exit.
    """
    worker = ThreadPoolWorker([queue], connection=redis_conn)
    worker.subscribe()
    worker.pubsub.unsubscribe()
    wait_for(lambda: not worker.pubsub.subscribed, message="the unsubscribe read by the thread")
    done = threading.Event()
    threading.Thread(target=lambda: (worker.unsubscribe(), done.set()), daemon=True).start()
    assert done.wait(20), "unsubscribe still waiting on the command channel's thread"
    assert not worker.pubsub_thread.is_alive()
