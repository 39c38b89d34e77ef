"""What the benchmarks share: child processes that always stop, Redis, gunicorn, signed Twilio payloads,
a load generator in its own process, an RQ SimpleWorker, and percentiles.

Everything listens on and talks to 127.0.0.1 only. Run as a script, this module is one of the child
processes the benchmarks start:

    python bench/_harness.py loadgen        # JSON spec on stdin, JSON results on stdout
    python bench/_harness.py simpleworker REDIS_URL QUEUE
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.payloads import inbound_sms  # noqa: E402  (the same Twilio form the tests send)

HOST = "127.0.0.1"
AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "b" * 32
# Signatures are computed for this origin; nothing ever connects to it (see PUBLIC_BASE_URL).
PUBLIC_BASE_URL = "https://sms.bench.test"
OUR_NUMBERS = ("+15005550006", "+15005550007")

# Same settings for the gateway and every baseline, the Procfile's `web` line with the worker class
# spelled out. 2 worker processes: one per core. Each process runs Python under one GIL, so it uses at
# most about one core; more processes on a 2-core machine only context-switch against each other and
# against Redis, the RQ worker and the load generator. 8 threads per process: a request that waits on
# Redis or on the SQLite write lock (or PostgreSQL) leaves the core to another request, and 2 x 8 = 16
# requests in flight serve 32 keep-alive senders without a queue building up; gthread parks idle
# keep-alive connections in its poller, so a thread is held only while a request is being handled.
GUNICORN_WORKERS = 2
GUNICORN_THREADS = 8
GUNICORN_ARGS = (
    "--worker-class",
    "gthread",
    "--workers",
    str(GUNICORN_WORKERS),
    "--threads",
    str(GUNICORN_THREADS),
    "--log-level",
    "warning",
)
GUNICORN_SETTINGS = f"gunicorn -k gthread -w {GUNICORN_WORKERS} --threads {GUNICORN_THREADS}"

# Words for message bodies, so payloads have the length and spread of real texts.
_TEXT = (
    "hi hello thanks can you tell me when the store opens tomorrow what is my order status i need "
    "to change my appointment please is there parking near the office how much does delivery cost "
    "do you ship to canada my package has not arrived yet could someone call me back ok great "
    "sounds good what are your hours on sunday I would like to book a table for four at 7pm"
)
_WORDS = _TEXT.split()


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize_ms(latencies_s: Sequence[float]) -> dict[str, Any]:
    """n, p50, p90, p99 and max of latencies given in seconds, in milliseconds."""

    def ms(p: float) -> float | None:
        value = percentile(latencies_s, p)
        return None if value is None else round(value * 1000, 2)

    return {"n": len(latencies_s), "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99), "max_ms": ms(100)}


# --- child processes ---------------------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours without any gateway setting, plus `extra`.

    Settings the developer has in their shell (DATABASE_URL, OPENAI_*, TWILIO_*...) must not leak
    into the bench; children also run in a scratch folder, so no `.env` file is read.
    """
    from gateway.config import ENV_NAMES

    drop = set(ENV_NAMES.values()) | {"PORT", "WEB_CONCURRENCY", "WEB_THREADS"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("OPENAI_", "TWILIO_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(BENCH_DIR)])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Children:
    """Every process a benchmark starts; stop_all() ends them, whatever happened before."""

    def __init__(self, workdir: Path) -> None:
        """Children write their logs into `workdir`."""
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
        """Start `argv` in its own process group, in the scratch folder, logging to <name>.log."""
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=str(self.workdir),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: gunicorn's workers stop with it
            )
        finally:
            log.close()
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines a child wrote."""
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen, timeout: float = 15) -> None:
        """SIGTERM the child's process group (a warm shutdown), SIGKILL it if it lingers."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Children of a child (gunicorn's workers) are in the same group: make sure none is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every child still running, newest first; SIGKILL what lingers past `timeout` seconds."""
        for _, proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=timeout)


class Bench:
    """A scratch folder and the children of one benchmark run; a context manager that cleans up."""

    def __init__(self, name: str) -> None:
        """Nothing starts until the with-block."""
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"smsgw-{name}-"))
        self.children = Children(self.workdir)
        self.failed = False

    def __enter__(self) -> Bench:
        """SIGTERM/SIGHUP end the run through the normal clean-up path."""

        def _stop(signum: int, frame: Any) -> None:
            raise SystemExit(f"stopped by signal {signum}")

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGHUP, _stop)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Stop every child; keep the scratch folder (and its logs) only when the run failed."""
        self.children.stop_all()
        if exc_type is not None or self.failed or os.environ.get("BENCH_KEEP"):
            print(f"[{self.name}] logs kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start_redis(self) -> str:
        """A redis-server of our own on a free loopback port (no persistence); returns its URL."""
        from redis import Redis

        binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if not binary:
            raise SystemExit("redis-server not found: `make bench` installs it; or set REDIS_SERVER")
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        self.children.start("redis", argv + ["--dir", str(self.workdir)], child_env())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if Redis(host=HOST, port=port, socket_connect_timeout=0.2).ping():
                    return f"redis://{HOST}:{port}/0"
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def start_gunicorn(self, name: str, app: str, env: dict[str, str], ready_path: str) -> int:
        """gunicorn serving `app` on a free loopback port with GUNICORN_ARGS; returns the port."""
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", *GUNICORN_ARGS, "--bind", f"{HOST}:{port}", app]
        proc = self.children.start(name, argv, env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start:\n{self.children.log_tail(name)}")
            if http_status(port, "GET", ready_path) == 200:
                return port
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer {ready_path}:\n{self.children.log_tail(name)}")

    def server_pids(self, name: str) -> list[int]:
        """The pids of the worker processes of the gunicorn started under `name`."""
        import psutil

        pids: list[int] = []
        for child_name, proc in self.children.procs:
            if child_name == name:
                with contextlib.suppress(psutil.Error):
                    pids += [c.pid for c in psutil.Process(proc.pid).children()]
        return pids

    def child_pids(self, name: str) -> list[int]:
        """The pids of the children started under `name` (not their own children)."""
        return [proc.pid for child_name, proc in self.children.procs if child_name == name]

    def stop_child(self, name: str) -> None:
        """Stop the children started under `name`."""
        for child_name, proc in list(self.children.procs):
            if child_name == name:
                self.children.stop(proc)


def http_status(port: int, method: str, path: str, timeout: float = 2.0) -> int | None:
    """The status of one request to 127.0.0.1:port, or None when nothing answers."""
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


# --- Twilio payloads -------------------------------------------------------------------------------


def sender_number(index: int, base: int = 2_000_000) -> str:
    """The index-th distinct person's number (a fictional US range)."""
    return f"+1555{base + index:07d}"


def message_sid(seq: int, salt: str) -> str:
    """A distinct, Twilio-shaped MessageSid (SM + 32 hex digits) for message number `seq`."""
    return f"SM{salt[:8]:0>8}{seq:024x}"


def inbound_sms_params(seq: int, sender: str, to: str, rng: random.Random, salt: str) -> dict[str, str]:
    """The form Twilio POSTs for one inbound SMS (the real field set, in Twilio's order)."""
    sid = message_sid(seq, salt)
    body = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 30)))
    if rng.random() < 0.1:
        body += " 👍"
    return inbound_sms(body, sid=sid, To=to, From=sender, MessagingServiceSid="", AccountSid=ACCOUNT_SID)


def signed_post(path: str, params: dict[str, str], host_header: str) -> bytes:
    """The raw HTTP/1.1 request Twilio would send: form body and a valid X-Twilio-Signature."""
    from twilio.request_validator import RequestValidator

    body = urlencode(params).encode()
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_BASE_URL + path, params)
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        "User-Agent: TwilioProxy/1.1\r\n"
        "Accept: */*\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Cache-Control: max-age=259200\r\n"
        f"X-Twilio-Signature: {signature}\r\n"
        f"I-Twilio-Idempotency-Token: {params.get('MessageSid', '')}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


# --- load generator (its own process) ---------------------------------------------------------------


def run_load(
    port: int,
    path: str,
    *,
    concurrency: int,
    count: int,
    warmup: int,
    first_seq: int,
    senders: int,
    sender_base: int = 2_000_000,
    salt: str = "bench",
    max_seconds: float = 30.0,
    timeout: float = 60.0,
    server_pids: Sequence[int] = (),
    rate: float | None = None,
) -> dict[str, Any]:
    """Send `warmup` then `count` signed inbound-SMS webhooks from `concurrency` keep-alive senders.

    With `rate` (requests/s) the measured requests are paced (open loop) rather than sent back to back.

    Runs in a separate process, so the generator's CPU is its own and its timing is not disturbed
    by the benchmark's threads. Each phase starts no request after `max_seconds` (a slow target
    sends fewer). Both phases use the same connections, opened before the clock starts; with
    `server_pids` (gunicorn's worker processes) they are re-opened until they are spread evenly
    over those processes (see `connections_per_process`). Returns the measured requests'
    latencies (seconds), the measured wall time, status counts and the generator's own CPU use.
    """
    spec = {
        "port": port,
        "path": path,
        "concurrency": concurrency,
        "count": count,
        "warmup": warmup,
        "first_seq": first_seq,
        "senders": senders,
        "sender_base": sender_base,
        "salt": salt,
        "max_seconds": max_seconds,
        "timeout": timeout,
        "balance": bool(server_pids),
        "rate": rate,
    }
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "loadgen"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        cwd=str(BENCH_DIR),
    )
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + 2 * timeout + 30
    spread: dict[int, int] = {}
    tries = 0
    try:
        proc.stdin.write((json.dumps(spec) + "\n").encode())
        proc.stdin.flush()
        while True:
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"load generator failed:\n{err[-3000:]}")
            message = json.loads(line)
            if "ports" not in message:
                break
            # The generator connected and waits: go on, or open the connections again.
            tries += 1
            spread = connections_per_process(server_pids, message["ports"])
            even = max(spread.values()) - min(spread.values()) <= max(2, concurrency // 8)
            answer = "go" if even or tries >= BALANCE_TRIES or time.monotonic() > deadline else "again"
            proc.stdin.write((answer + "\n").encode())
            proc.stdin.flush()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    message["connections_per_process"] = sorted(spread.values(), reverse=True)
    message["balance_tries"] = tries
    return message


# How often the generator may re-open its connections to spread them over gunicorn's workers.
BALANCE_TRIES = 12


def connections_per_process(pids: Sequence[int], client_ports: Sequence[int]) -> dict[int, int]:
    """How many of the generator's connections (by client port) each server process accepted.

    gunicorn's workers share one listening socket and whichever wakes first accepts: 32 keep-alive
    connections can all land in one worker, which then serves them on one core while the other
    idles. That changes from run to run, so a round would measure one core or two by chance; the
    generator re-opens its connections until they are spread evenly. Waits (up to 2 s) until the
    server has accepted every connection.
    """
    import psutil

    wanted = set(client_ports)
    counts: dict[int, int] = {}
    deadline = time.monotonic() + 2.0
    while True:
        counts = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                conns = psutil.Process(pid).net_connections(kind="tcp")
                counts[pid] = sum(
                    1
                    for c in conns
                    if c.raddr and c.raddr.port in wanted and c.status == psutil.CONN_ESTABLISHED
                )
        if sum(counts.values()) >= len(wanted) or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


class _Load:
    """One batch of pre-built requests shared by the sender connections of one event loop."""

    def __init__(
        self,
        requests: list[bytes],
        loop: asyncio.AbstractEventLoop,
        stop_at: float,
        rate: float | None = None,
    ) -> None:
        self.requests = requests
        self.stop_at = stop_at  # perf_counter() after which no new request starts
        # Paced (open-loop) load: request k is due at start + k / rate, whatever the answers do.
        self.interval = 1.0 / rate if rate else 0.0
        self.start = time.perf_counter()
        self.next = 0
        self.in_flight = 0
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.errors = 0
        self.done = loop.create_future()

    def exhausted(self) -> bool:
        return self.next >= len(self.requests) or time.perf_counter() >= self.stop_at

    def take(self) -> bytes | None:
        if self.exhausted():
            self.check_done()
            return None
        req = self.requests[self.next]
        self.next += 1
        self.in_flight += 1
        return req

    def due_in(self) -> float:
        """Seconds until the request just taken is due (0 when the load is not paced)."""
        if not self.interval:
            return 0.0
        return self.start + (self.next - 1) * self.interval - time.perf_counter()

    def finish_one(self, status: int | None, latency: float | None) -> None:
        key = str(status) if status is not None else "error"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if status is not None and 200 <= status < 300 and latency is not None:
            self.latencies.append(latency)
        elif status is None:
            self.errors += 1
        self.in_flight -= 1
        self.check_done()

    def check_done(self) -> None:
        if self.in_flight <= 0 and self.exhausted() and not self.done.done():
            self.done.set_result(None)


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)


class _Sender(asyncio.Protocol):
    """One keep-alive connection: sends its batch's next request as soon as the previous one is answered."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.load: _Load | None = None
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent_at: float | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def start(self, load: _Load) -> None:
        """Take part in a batch."""
        self.load = load
        self.send_next()

    def send_next(self) -> None:
        if self.load is None or not self.open:
            return
        req = self.load.take()
        if req is None:
            return  # stays open and idle for the next batch
        delay = self.load.due_in()
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._write, req)
        else:
            self._write(req)

    def _write(self, req: bytes) -> None:
        """Send one request now; its latency counts from here."""
        if not self.open:
            return
        self.sent_at = time.perf_counter()
        self.transport.write(req)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[: end + 2])
        m = _CONTENT_LENGTH.search(head)
        length = int(m.group(1)) if m else 0
        if len(self.buf) < end + 4 + length:
            return
        latency = time.perf_counter() - (self.sent_at or 0.0)
        status = int(head[9:12])
        del self.buf[: end + 4 + length]
        self.sent_at = None
        if self.load is not None:
            self.load.finish_one(status, latency)
        if _CONNECTION_CLOSE.search(head):
            self.transport.close()  # type: ignore[union-attr]
        else:
            self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        lost_request = self.sent_at is not None
        self.sent_at = None
        self.pool.replace(self, lost_request)


class _Pool:
    """`concurrency` keep-alive connections to one port, replaced when the server closes one."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self.senders: list[_Sender] = []
        self.reconnects = 0
        self.closing = False

    async def open(self) -> None:
        """Open every connection (none sends yet)."""
        loop = asyncio.get_running_loop()
        self.senders = []
        for _ in range(self.size):
            _, sender = await loop.create_connection(lambda: _Sender(self), HOST, self.port)
            self.senders.append(sender)

    def close(self) -> None:
        """Close every connection."""
        self.closing = True
        for sender in self.senders:
            if sender.transport is not None:
                sender.transport.close()
        self.senders = []
        self.closing = False

    def client_ports(self) -> list[int]:
        """The local port of each connection (how the server side can be told apart)."""
        return [s.transport.get_extra_info("sockname")[1] for s in self.senders if s.transport is not None]

    def replace(self, sender: _Sender, lost_request: bool) -> None:
        """A connection closed: count a request in flight as an error, open another if work is left."""
        if self.closing or sender not in self.senders:
            return
        self.senders.remove(sender)
        load = sender.load
        if lost_request and load is not None:
            load.finish_one(None, None)
        if load is not None and not load.exhausted() and self.reconnects < 1000:
            self.reconnects += 1
            asyncio.get_running_loop().create_task(self._reconnect(load))

    async def _reconnect(self, load: _Load) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, sender = await loop.create_connection(lambda: _Sender(self), HOST, self.port)
        except OSError:
            await asyncio.sleep(0.05)
            if not load.exhausted():
                req = load.take()  # count the request we cannot send as an error
                if req is not None:
                    load.finish_one(None, None)
                loop.create_task(self._reconnect(load))
            return
        self.senders.append(sender)
        sender.start(load)

    async def run(
        self, requests: list[bytes], max_seconds: float, timeout: float, rate: float | None = None
    ) -> dict[str, Any]:
        """Send the requests over the pool, starting none after `max_seconds`; wait for the answers.

        With `rate`, requests are sent at that pace (open loop, as Twilio sends them) instead of
        each connection sending again as soon as it is answered.
        """
        loop = asyncio.get_running_loop()
        if requests:
            while len(self.senders) < self.size:  # the server closed some while they were idle
                _, sender = await loop.create_connection(lambda: _Sender(self), HOST, self.port)
                self.senders.append(sender)
        start = time.perf_counter()
        load = _Load(requests, loop, start + max_seconds, rate)
        if not requests:
            return {
                "latencies": [],
                "statuses": {},
                "errors": 0,
                "elapsed": 0.0,
                "timed_out": False,
                "sent": 0,
            }
        for sender in list(self.senders):
            sender.start(load)
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(load.done), timeout)
        except TimeoutError:
            timed_out = True
        elapsed = time.perf_counter() - start
        for sender in self.senders:
            if sender.load is load:
                sender.load = None
        return {
            "latencies": load.latencies,
            "statuses": load.statuses,
            "errors": load.errors,
            "elapsed": elapsed,
            "timed_out": timed_out,
            "sent": load.next,
            "capped": load.next < len(load.requests),
        }


async def _session(spec: dict[str, Any], warm: list[bytes], measured: list[bytes]) -> dict[str, Any]:
    """Connect (spread over the server's processes when asked), warm up, then measure."""
    loop = asyncio.get_running_loop()
    pool = _Pool(spec["port"], spec["concurrency"])
    await pool.open()
    if spec.get("balance"):
        while True:
            print(json.dumps({"ports": pool.client_ports()}), flush=True)
            answer = await loop.run_in_executor(None, sys.stdin.readline)
            if answer.strip() != "again":
                break
            pool.close()
            await asyncio.sleep(0.05)
            await pool.open()
    cap, timeout = spec["max_seconds"], spec["timeout"]
    warm_result = await pool.run(warm, cap, timeout)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    result = await pool.run(measured, cap, timeout, spec.get("rate"))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    pool.close()
    result["loadgen_cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    result["warmup_statuses"] = warm_result["statuses"]
    result["reconnects"] = pool.reconnects
    return result


def _loadgen_main() -> None:
    """The load generator process: build and sign every request first, then connect, warm up, measure."""
    spec = json.loads(sys.stdin.readline())
    rng = random.Random(spec["first_seq"])
    host_header = f"{HOST}:{spec['port']}"

    def build(first: int, n: int, round_robin: bool) -> list[bytes]:
        out = []
        for i, seq in enumerate(range(first, first + n)):
            # Warm-up visits every person in turn (so each one's chat exists before the clock
            # starts); measured traffic picks people at random. A person always texts the same
            # one of our numbers, as people do.
            person = i % spec["senders"] if round_robin else rng.randrange(spec["senders"])
            sender = sender_number(person, spec["sender_base"])
            to = OUR_NUMBERS[person % len(OUR_NUMBERS)]
            params = inbound_sms_params(seq, sender, to, rng, spec["salt"])
            out.append(signed_post(spec["path"], params, host_header))
        return out

    warm = build(spec["first_seq"], spec["warmup"], round_robin=True)
    measured = build(spec["first_seq"] + spec["warmup"], spec["count"], round_robin=False)
    result = asyncio.run(_session(spec, warm, measured))
    print(json.dumps(result), flush=True)


def process_cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds the processes used so far (0 for one that is gone)."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


class CpuMeter:
    """Over one window: how busy the whole machine was, and how much of that was not us.

    "Us" is this process, its children (the load generator, once reaped) and every live descendant
    (gunicorn and its workers, Redis, the RQ worker). The rest is other people's work on a shared
    machine: the noise the figures carry.
    """

    def __init__(self) -> None:
        """Start the window now."""
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            import psutil
        except ImportError:  # psutil comes with the test extras; without it, no noise figure
            return None
        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        me = psutil.Process()
        mt = me.cpu_times()
        ours = mt.user + mt.system + mt.children_user + mt.children_system
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ct = child.cpu_times()
                ours += ct.user + ct.system
        return time.monotonic(), busy, ours

    def stop(self) -> dict[str, float] | None:
        """Shares of the machine's total CPU (all cores) over the window: busy, ours, others."""
        end = self._sample()
        if self._start is None or end is None:
            return None
        capacity = (end[0] - self._start[0]) * (os.cpu_count() or 1)
        if capacity <= 0:
            return None
        busy = (end[1] - self._start[1]) / capacity
        ours = (end[2] - self._start[2]) / capacity
        return {"busy": round(busy, 3), "ours": round(ours, 3), "others": round(max(busy - ours, 0.0), 3)}


# --- RQ ----------------------------------------------------------------------------------------------


def noop() -> None:
    """A job that does nothing: what is left of a job's time is RQ's own round trip."""
    return None


def _simpleworker_main(redis_url: str, queue: str) -> None:
    """RQ's non-forking SimpleWorker on one queue, until SIGTERM."""
    from redis import Redis
    from rq import SimpleWorker

    from gateway.queue import JobSerializer, job_queue

    connection = Redis.from_url(redis_url)
    SimpleWorker([job_queue(queue, connection)], connection=connection, serializer=JobSerializer).work(
        with_scheduler=False, logging_level="WARNING"
    )


def rq_noop_round_trips(
    bench: Bench, redis_url: str, n: int, warmup: int = 20, timeout: float = 30.0
) -> list[float]:
    """Seconds from enqueue to result for `n` no-op jobs, one at a time, through a SimpleWorker process."""
    from redis import Redis

    from gateway.queue import job_queue

    queue_name = "bench-noop"
    proc = bench.children.start(
        "rq-simpleworker",
        [sys.executable, str(Path(__file__).resolve()), "simpleworker", redis_url, queue_name],
        child_env(),
    )
    connection = Redis.from_url(redis_url)
    queue = job_queue(queue_name, connection)
    deadline = time.monotonic() + timeout
    samples: list[float] = []
    try:
        for i in range(warmup + n):
            if time.monotonic() > deadline or proc.poll() is not None:
                break
            start = time.perf_counter()
            job = queue.enqueue("_harness.noop", result_ttl=60)
            # Blocks on the job's result stream (XREAD BLOCK): no polling interval in the figure.
            result = job.latest_result(timeout=10)
            elapsed = time.perf_counter() - start
            if result is not None and i >= warmup:
                samples.append(elapsed)
    finally:
        bench.children.stop(proc)
        connection.close()
    return samples


def format_ms(value: float | None) -> str:
    """'12.3 ms' (or '-' when missing)."""
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def table(rows: Iterable[Sequence[str]], widths: Sequence[int]) -> str:
    """Rows of cells, left-aligned first column, right-aligned others."""
    lines = []
    for row in rows:
        cells = [f"{row[0]:<{widths[0]}}"] + [f"{c:>{w}}" for c, w in zip(row[1:], widths[1:], strict=False)]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "loadgen":
        _loadgen_main()
    elif command == "simpleworker":
        _simpleworker_main(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
