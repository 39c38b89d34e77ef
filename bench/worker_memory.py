"""Memory and throughput of the thread-pool worker vs RQ's forking Worker, on a slow fake model.

Run: .venv/bin/python bench/worker_memory.py [--jobs 200] [--delay 2] [--fork-workers 10]

Starts its own redis-server (free port, temp dir) and a loopback HTTP server that answers an
OpenAI-style chat completion after `--delay` seconds. Each job calls it with the real `openai`
client (blocking HTTP), so worker processes carry the same heavy imports a reply job does
(openai, pydantic, httpx, peewee via gateway.db).

(a) one ThreadPoolWorker process (`python -m workers.pool`, concurrency = --jobs) runs --jobs
    jobs, all in flight at once.
(b) the baseline, RQ's default forking Worker: --fork-workers processes, each forking a work
    horse per job. Only that many jobs are in flight; the figure for --jobs in flight is
    extrapolated (one worker + one horse per job in flight) and labelled as such.

Memory is the whole worker process tree (the worker and its children), sampled every 0.1 s:
RSS summed (what `ps` shows; counts pages shared copy-on-write between a worker and its horse
twice) and PSS summed (shared pages split between sharers: the honest total). Everything it
started is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = "bench.worker_memory.call_model"

_client = None
_client_lock = threading.Lock()


def call_model(base_url: str) -> str:
    """The benchmark job: one chat completion through the openai client (shared per process)."""
    global _client
    from openai import OpenAI

    with _client_lock:
        if _client is None:
            _client = OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=60)
    completion = _client.chat.completions.create(model="bench", messages=[{"role": "user", "content": "hi"}])
    return completion.choices[0].message.content


def preload() -> None:
    """Import what a reply job imports, so a worker (and its forks) start as heavy as ours."""
    import openai  # noqa: F401

    import gateway.storage.db  # noqa: F401


# --- the fake model ---------------------------------------------------------------------------


class _SlowModel(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: sleep, then a minimal OpenAI chat completion."""

    delay = 2.0
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        """Answer after the delay."""
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.delay)
        body = json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "bench",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        """Quiet."""


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that accepts a burst of 200+ connections."""

    daemon_threads = True
    request_queue_size = 1024


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- measuring ----------------------------------------------------------------------------------


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(RSS sum, PSS sum, process count) of a process and all its descendants, in bytes."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    rss = pss = count = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return rss, pss, count


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by a process, its live descendants and the children it reaped."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class Sampler:
    """Samples the memory of several process trees and the in-flight count until stopped."""

    def __init__(self, pids: list[int], in_flight) -> None:
        """Watch these root pids; `in_flight()` counts jobs running."""
        self.pids = pids
        self.in_flight = in_flight
        self.peak_rss = self.peak_pss = self.peak_procs = self.peak_in_flight = 0
        self.rss_at_peak_in_flight = self.pss_at_peak_in_flight = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            rss = pss = procs = 0
            for pid in self.pids:
                r, p, c = tree_memory(pid)
                rss, pss, procs = rss + r, pss + p, procs + c
            flying = self.in_flight()
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, procs)
            if flying >= self.peak_in_flight:
                self.peak_in_flight = flying
                self.rss_at_peak_in_flight = max(self.rss_at_peak_in_flight, rss)
                self.pss_at_peak_in_flight = max(self.pss_at_peak_in_flight, pss)


def job_stats(jobs) -> dict:
    """Throughput and duration percentiles from RQ's own started_at/ended_at."""
    done = [j for j in jobs if j is not None and j.started_at and j.ended_at]
    durations = sorted((j.ended_at - j.started_at).total_seconds() for j in done)
    first = min(j.started_at for j in done)
    last = max(j.ended_at for j in done)
    span = (last - first).total_seconds()
    return {
        "done": len(done),
        "jobs_per_s": len(done) / span if span > 0 else float("nan"),
        "p50": statistics.median(durations),
        "p99": durations[min(len(durations) - 1, int(round(0.99 * (len(durations) - 1))))],
        "span": span,
        "ramp": (max(j.started_at for j in done) - first).total_seconds(),
    }


def mib(value: float) -> str:
    """Bytes as MiB."""
    return f"{value / 2**20:8.1f} MiB"


# --- the runs -----------------------------------------------------------------------------------


def run_jobs(
    redis_url: str, queue_name: str, n: int, model_url: str, commands: list[list[str]], log_dir: Path
):
    """Start worker processes, wait till they are up (idle memory), enqueue n jobs, wait, measure."""
    from redis import Redis
    from rq import Worker
    from rq.job import Job
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

    from gateway.queue import JobSerializer, job_queue

    conn = Redis.from_url(redis_url)
    queue = job_queue(queue_name, conn)
    procs = []
    try:
        for i, command in enumerate(commands):
            log = open(log_dir / f"{queue_name}-{i}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append(
                (subprocess.Popen(command, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT), log)
            )
        deadline = time.monotonic() + 60
        while len(Worker.all(queue=queue)) < len(commands):
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
                raise RuntimeError(f"workers did not start; see {log_dir}")
            time.sleep(0.1)
        time.sleep(0.5)
        idle_rss = idle_pss = 0
        for p, _ in procs:
            r, s, _c = tree_memory(p.pid)
            idle_rss, idle_pss = idle_rss + r, idle_pss + s
        idle_cpu = sum(tree_cpu(p.pid) for p, _ in procs)
        started_registry = StartedJobRegistry(queue=queue)
        sampler = Sampler([p.pid for p, _ in procs], lambda: conn.zcard(started_registry.key)).start()
        began = time.monotonic()
        with conn.pipeline() as pipe:
            ids = [queue.enqueue(JOB, model_url, result_ttl=600, pipeline=pipe).id for _ in range(n)]
            pipe.execute()
        finished, failed = FinishedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)
        deadline = time.monotonic() + 120
        while conn.zcard(finished.key) + conn.zcard(failed.key) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs did not finish in time; see {log_dir}")
            time.sleep(0.05)
        wall = time.monotonic() - began
        sampler.stop()
        cpu = sum(tree_cpu(p.pid) for p, _ in procs) - idle_cpu
        for p, _ in procs:
            p.send_signal(signal.SIGTERM)
        for p, _ in procs:
            p.wait(timeout=30)
        jobs = Job.fetch_many(ids, connection=conn, serializer=JobSerializer)
        return {
            "cpu_per_job": cpu / n,
            "idle_rss": idle_rss,
            "idle_pss": idle_pss,
            "sampler": sampler,
            "wall": wall,
            **job_stats(jobs),
        }
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
            log.close()
        conn.close()


def main() -> None:
    """Run both configurations and print the comparison."""
    parser = argparse.ArgumentParser(
        description="ThreadPoolWorker vs RQ forking Worker: memory and throughput"
    )
    parser.add_argument(
        "--jobs", type=int, default=200, help="jobs, all in flight at once in the thread pool"
    )
    parser.add_argument("--delay", type=float, default=2.0, help="seconds the fake model takes per request")
    parser.add_argument("--fork-workers", type=int, default=10, help="forking RQ workers in the baseline")
    parser.add_argument(
        "--fork-jobs", type=int, default=None, help="jobs for the baseline (default 2 rounds)"
    )
    args = parser.parse_args()
    fork_jobs = args.fork_jobs or 2 * args.fork_workers

    redis_binary = shutil.which("redis-server")
    if not redis_binary:
        raise SystemExit("redis-server not found on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="smsgw-bench-"))
    port = free_port()
    redis_proc = subprocess.Popen(
        [redis_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(workdir), "--maxclients", "4096"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _SlowModel.delay = args.delay
    server = _Server(("127.0.0.1", 0), _SlowModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    model_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    redis_url = f"redis://127.0.0.1:{port}/0"
    try:
        from redis import Redis

        deadline = time.monotonic() + 10
        while True:
            try:
                if Redis.from_url(redis_url).ping():
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

        py = sys.executable
        pool_cmd = [
            py,
            "-c",
            "import sys; from bench.worker_memory import preload; preload(); "
            "from workers.pool import main; main(sys.argv[1:])",
            "--url",
            redis_url,
            "--queue",
            "bench-threads",
            "--concurrency",
            str(args.jobs),
            "--no-scheduler",
            "--log-level",
            "WARNING",
        ]
        fork_code = (
            "import sys; from bench.worker_memory import preload; preload(); "
            "from redis import Redis; from rq import Worker; from gateway.queue import JobSerializer; "
            "Worker([sys.argv[2]], connection=Redis.from_url(sys.argv[1]), serializer=JobSerializer)"
            ".work(logging_level='WARNING')"
        )
        fork_cmd = [py, "-c", fork_code, redis_url, "bench-forks"]

        print(f"fake model: {args.delay:.1f} s per request; redis and model on 127.0.0.1", flush=True)
        print(f"(a) ThreadPoolWorker, 1 process, concurrency {args.jobs}, {args.jobs} jobs ...", flush=True)
        a = run_jobs(redis_url, "bench-threads", args.jobs, model_url, [pool_cmd], workdir)
        print(
            f"(b) RQ Worker (fork per job), {args.fork_workers} processes, {fork_jobs} jobs ...", flush=True
        )
        b = run_jobs(redis_url, "bench-forks", fork_jobs, model_url, [fork_cmd] * args.fork_workers, workdir)
    finally:
        server.shutdown()
        server.server_close()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    sa, sb = a["sampler"], b["sampler"]
    n_b = max(sb.peak_in_flight, 1)
    per_job_rss = (sb.rss_at_peak_in_flight) / n_b
    per_job_pss = (sb.pss_at_peak_in_flight) / n_b
    print()
    print(f"{'':34}{'(a) threads':>16}{'(b) forking Worker':>22}")
    print(f"{'jobs run':34}{a['done']:>16}{b['done']:>22}")
    print(f"{'peak jobs in flight':34}{sa.peak_in_flight:>16}{sb.peak_in_flight:>22}")
    print(f"{'peak processes in tree':34}{sa.peak_procs:>16}{sb.peak_procs:>22}")
    print(f"{'idle RSS (before jobs)':34}{mib(a['idle_rss']):>16}{mib(b['idle_rss']):>22}")
    print(f"{'peak RSS sum':34}{mib(sa.peak_rss):>16}{mib(sb.peak_rss):>22}")
    print(f"{'peak PSS sum':34}{mib(sa.peak_pss):>16}{mib(sb.peak_pss):>22}")
    per_a = (sa.peak_rss - a["idle_rss"]) / max(sa.peak_in_flight, 1)
    print(f"{'RSS per job in flight':34}{mib(per_a):>16}{mib(per_job_rss):>22}  (b: worker+horse)")
    print(f"{'jobs/s':34}{a['jobs_per_s']:>16.1f}{b['jobs_per_s']:>22.1f}")
    print(f"{'worker CPU per job':34}{a['cpu_per_job'] * 1000:>14.1f}ms{b['cpu_per_job'] * 1000:>20.1f}ms")
    print(f"{'first to last job start':34}{a['ramp']:>15.2f}s{b['ramp']:>21.2f}s")
    print(f"{'job duration p50':34}{a['p50']:>15.2f}s{b['p50']:>21.2f}s")
    print(f"{'job duration p99':34}{a['p99']:>15.2f}s{b['p99']:>21.2f}s")
    print()
    print(
        f"(b) extrapolated to {args.jobs} in flight ({args.jobs} worker processes + {args.jobs} horses): "
        f"RSS ~{per_job_rss * args.jobs / 2**30:.1f} GiB, PSS ~{per_job_pss * args.jobs / 2**30:.1f} GiB, "
        f"at most ~{min(args.jobs / args.delay, (os.cpu_count() or 1) / b['cpu_per_job']):.0f} jobs/s "
        f"on {os.cpu_count()} cores at {b['cpu_per_job'] * 1000:.0f} ms CPU per job; "
        f"measured with {n_b} in flight, not run."
    )
    print(f"(a) measured: {args.jobs} in flight in {mib(sa.peak_rss).strip()} RSS, one process.")


if __name__ == "__main__":
    main()
