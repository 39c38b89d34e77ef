"""The fault suite's rig (tests/test_faults.py, bench/fault_bench.py): bursts of texts from many people,
real `smsgw worker` processes kept running by a supervisor, and the tally taken at the fake Twilio.

Each text carries a token (`q17`); the fake model answers with the tokens of every text it is asked
about since the chat's last reply ("re q17 q18": a burst in one chat is answered as one), so every
message the fake Twilio accepted says which texts it answers. A text is answered when one accepted
message names it, lost when none does, answered twice when more than one does; a chat's replies
are in order when the tokens a person receives only ever grow.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import Settings, settings_to_env
from tests.fakes.model import content_text
from tests.payloads import inbound_sms

ROOT = Path(__file__).resolve().parent.parent
TOKEN = re.compile(r"\bq(\d+)\b")


def token_responder(body: dict[str, Any]) -> str:
    """The fake model's answer: the tokens of the user texts after the chat's last reply."""
    messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    last_reply = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    tokens = [
        token
        for m in messages[last_reply + 1 :]
        if m.get("role") == "user"
        for token in TOKEN.findall(content_text(m.get("content")))
    ]
    return "re " + " ".join(f"q{t}" for t in tokens) if tokens else "re nothing"


def person(index: int) -> str:
    """The phone number of person `index`."""
    return f"+1415556{index:04d}"


@dataclass
class Tally:
    """What the fake Twilio saw for one burst."""

    name: str
    sent: int
    answered_once: int
    lost: list[int]
    doubled: list[int]
    out_of_order: list[str]
    latencies: list[float] = field(default_factory=list)

    @property
    def answered(self) -> int:
        """Texts answered at least once."""
        return self.sent - len(self.lost)

    def line(self) -> str:
        """The one line each fault test prints."""
        text = (
            f"{self.name}: texts sent {self.sent}, answered {self.answered}, lost {len(self.lost)}, "
            f"answered twice {len(self.doubled)}, chats out of order {len(self.out_of_order)}"
        )
        if self.latencies:
            text += (
                f", text-to-reply p50 {statistics.median(self.latencies):.2f} s"
                f" max {max(self.latencies):.2f} s"
            )
        return text

    def assert_exactly_once(self) -> None:
        """Fail on any lost, doubled or out-of-order reply."""
        assert not self.lost and not self.doubled and not self.out_of_order, (
            f"{self.line()}; lost {self.lost[:20]}, doubled {self.doubled[:20]}, "
            f"out of order {self.out_of_order[:5]}"
        )


class Burst:
    """Texts from `people` people, each with a token, posted through `post(form)`."""

    def __init__(
        self, post: Callable[[dict[str, str]], Any], people: int = 30, our_number: str | None = None
    ):
        """Nothing is sent yet."""
        self.post = post
        self.people = people
        self.our_number = our_number
        self.sent_at: dict[int, float] = {}
        self.sender: dict[int, str] = {}
        self._next = 1
        self._lock = threading.Lock()

    def send(self, count: int, pause: float = 0.0, stop: threading.Event | None = None) -> None:
        """Post `count` texts, person after person, `pause` seconds apart."""
        for _ in range(count):
            if stop is not None and stop.is_set():
                return
            with self._lock:
                token = self._next
                self._next += 1
            who = person(token % self.people)
            extra = {"To": self.our_number} if self.our_number else {}
            form = inbound_sms(f"question q{token}", From=who, **extra)
            self.sender[token] = who
            self.sent_at[token] = time.monotonic()
            self.post(form)
            if pause:
                time.sleep(pause)

    def tally(self, fake_twilio, name: str) -> Tally:
        """Count, per text, the accepted messages naming it; check each person's replies are in order."""
        with fake_twilio._cond:
            accepted = list(fake_twilio.messages)
        counts: Counter[int] = Counter()
        first_reply: dict[int, float] = {}
        seen_by_person: dict[str, list[int]] = defaultdict(list)
        for message in accepted:
            tokens = [int(t) for t in TOKEN.findall(message.get("Body") or "")]
            for token in tokens:
                counts[token] += 1
                first_reply.setdefault(token, message["received_at"])
            seen_by_person[message["To"]].extend(tokens)
        sent = sorted(self.sent_at)
        out_of_order = [
            f"{who}: {tokens}" for who, tokens in seen_by_person.items() if tokens != sorted(tokens)
        ]
        latencies = [first_reply[t] - self.sent_at[t] for t in sent if t in first_reply]
        return Tally(
            name=name,
            sent=len(sent),
            answered_once=sum(1 for t in sent if counts[t] == 1),
            lost=[t for t in sent if counts[t] == 0],
            doubled=[t for t in sent if counts[t] > 1],
            out_of_order=out_of_order,
            latencies=latencies,
        )

    def all_answered(self, fake_twilio) -> bool:
        """True when every text sent so far has a reply naming it."""
        with fake_twilio._cond:
            bodies = [m.get("Body") or "" for m in fake_twilio.messages]
        answered = {int(t) for body in bodies for t in TOKEN.findall(body)}
        return set(self.sent_at) <= answered


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a `smsgw worker` on these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_"))}
    env.update(settings_to_env(settings))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Supervisor:
    """Keeps `count` `smsgw worker` processes running, restarting any that exits (like systemd)."""

    def __init__(self, settings: Settings, log_dir: Path, count: int = 1) -> None:
        """Nothing starts until start()."""
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen | None] = [None] * count
        self.restarts = 0
        self.started_at: list[float] = []  # monotonic time of each (re)start
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._logs: list[Any] = []

    def _spawn(self, slot: int) -> subprocess.Popen:
        log = open(self.log_dir / f"worker{slot}.log", "ab")  # noqa: SIM115 - open for the process's life
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "worker"],
            cwd=str(ROOT),
            env=worker_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.started_at.append(time.monotonic())
        return proc

    def start(self) -> None:
        """Start every worker and the thread that restarts them."""
        with self._lock:
            for slot in range(len(self.procs)):
                self.procs[slot] = self._spawn(slot)
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                for slot, proc in enumerate(self.procs):
                    if proc is not None and proc.poll() is not None and not self._stop.is_set():
                        self.procs[slot] = self._spawn(slot)
                        self.restarts += 1

    def pids(self) -> list[int]:
        """The pids of the worker processes now."""
        with self._lock:
            return [p.pid for p in self.procs if p is not None]

    def kill(self, slot: int = 0) -> int:
        """SIGKILL the worker in `slot` (the supervisor restarts it); returns the pid killed."""
        with self._lock:
            proc = self.procs[slot]
            assert proc is not None
            proc.kill()
            proc.wait(timeout=10)
            return proc.pid

    def stop(self) -> None:
        """Stop restarting, then stop every worker (SIGTERM, warm shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()

    def logs(self) -> str:
        """Everything the workers printed."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker*.log")))


def settled(settings: Settings, connection) -> bool:
    """True when nothing more will be sent: no text waits for a reply, no reply job is queued or running."""
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    from gateway.queue import job_queue, queue_name
    from gateway.storage.db import database
    from gateway.storage.models import Message, ReplyState, Role

    with database.connection_context():
        pending = (
            Message.select()
            .where((Message.role == Role.USER.value) & (Message.reply_state == ReplyState.PENDING.value))
            .count()
        )
        unsent = (
            Message.select()
            .where(
                (Message.role == Role.AGENT.value)
                & Message.twilio_sid.is_null()
                & Message.status.in_(["queued", "sending"])
            )
            .count()
        )
    if pending or unsent:
        return False
    name = queue_name(settings)
    queue = job_queue(name, connection)
    live = (
        queue.get_job_ids()
        + StartedJobRegistry(name, connection=connection).get_job_ids(cleanup=False)
        + ScheduledJobRegistry(name, connection=connection).get_job_ids(cleanup=False)
    )
    return not any(job_id.startswith("reply-") for job_id in live)


# --- the scenarios (tests/test_faults.py asserts on them, bench/fault_bench.py times them) ---------


@dataclass
class Rig:
    """What a scenario drives: settings, the web (post), the fakes, Redis, and worker supervisors."""

    settings: Settings
    post: Callable[[dict[str, str]], Any]
    fake_model: Any
    fake_twilio: Any
    redis_server: Any
    redis_conn: Any
    start_workers: Callable[[int], Supervisor]


def finish(rig: Rig, burst: Burst, name: str, timeout: float = 90) -> Tally:
    """Wait until every text is answered and nothing more will be sent (or `timeout`); the tally."""
    from tests.conftest import wait_for

    try:
        wait_for(
            lambda: burst.all_answered(rig.fake_twilio), timeout=timeout, interval=0.2, message="answers"
        )
        wait_for(lambda: settled(rig.settings, rig.redis_conn), timeout=30, interval=0.2, message="settling")
    except AssertionError:
        pass  # the tally says what is missing
    return burst.tally(rig.fake_twilio, name)


def no_fault(rig: Rig) -> Tally:
    """The baseline: 100 texts from 30 people, one worker, nothing fails."""
    rig.fake_model.latency = 0.3
    rig.start_workers(1)
    burst = Burst(rig.post, people=30)
    burst.send(100, pause=0.08)
    return finish(rig, burst, "no fault (baseline)")


def kill_storm(rig: Rig, kills: int = 20) -> tuple[Tally, Supervisor]:
    """100 texts from 30 people while one of two workers is SIGKILLed mid-reply `kills` times."""
    import random

    from tests.conftest import wait_for

    rig.fake_model.latency = 0.3  # replies are in flight when the kills land
    supervisor = rig.start_workers(2)
    burst = Burst(rig.post, people=30)
    stop = threading.Event()
    sender = threading.Thread(target=burst.send, args=(100, 0.08, stop))
    sender.start()
    rng = random.Random(20)
    try:
        for _ in range(kills):
            wait_for(lambda: rig.fake_model.in_flight > 0 or not sender.is_alive(), timeout=20, interval=0.01)
            supervisor.kill(rng.randrange(2))
            time.sleep(rng.uniform(0.1, 0.5))
    finally:
        stop.set()
        sender.join()
    return finish(rig, burst, f"{kills} SIGKILLs"), supervisor


def one_kill(rig: Rig) -> tuple[Tally, float]:
    """A worker SIGKILLed mid-reply: tally, seconds from its replacement's start to the last reply."""
    from tests.conftest import wait_for

    rig.fake_model.latency = 1.0
    supervisor = rig.start_workers(1)
    burst = Burst(rig.post, people=10)
    burst.send(10)
    wait_for(lambda: rig.fake_model.in_flight >= 5, timeout=30, interval=0.01, message="replies in flight")
    supervisor.kill(0)
    wait_for(lambda: supervisor.restarts == 1, timeout=10, interval=0.01, message="replacement")
    replacement = supervisor.started_at[-1]
    rig.fake_model.latency = 0.1
    tally = finish(rig, burst, "1 SIGKILL mid-reply")
    with rig.fake_twilio._cond:
        last = max((m["received_at"] for m in rig.fake_twilio.messages), default=replacement)
    return tally, last - replacement


def redis_outage(rig: Rig, seconds: float = 10) -> tuple[Tally, Supervisor, list[int]]:
    """Redis stopped for `seconds` in the middle of a burst; returns the worker pids from before."""
    from tests.conftest import wait_for

    rig.fake_model.latency = 0.2
    supervisor = rig.start_workers(2)
    wait_for(lambda: len(rig.redis_conn.smembers("rq:workers")) == 2, message="workers registered")
    pids = supervisor.pids()
    burst = Burst(rig.post, people=30)
    burst.send(30, pause=0.03)
    down = time.monotonic()
    rig.redis_server.stop()
    try:
        burst.send(40, pause=(seconds - 2) / 40)  # texts while Redis is down: recorded, answered later
        time.sleep(max(0.0, seconds - (time.monotonic() - down)))
    finally:
        rig.redis_server.start()
    burst.send(30, pause=0.03)
    return finish(rig, burst, f"Redis down {seconds:.0f} s"), supervisor, pids


def flaky_services(rig: Rig, rate: float = 0.3) -> Tally:
    """`rate` of model calls fail (5xx, hangs past the timeout) and `rate` of Twilio sends (429, 5xx)."""
    rig.fake_model.inject_faults(rate, hang=1.5)
    rig.fake_twilio.inject_faults(rate)
    rig.start_workers(1)
    burst = Burst(rig.post, people=30)
    burst.send(100, pause=0.02)
    pct = round(rate * 100)
    return finish(rig, burst, f"{pct}% model + {pct}% Twilio failures", timeout=120)


def database_kills(rig: Rig, rounds: int = 2) -> tuple[Tally, Supervisor, list[int], int]:
    """pg_terminate_backend on every connection of the database but ours, `rounds` times mid-burst."""
    import psycopg2

    from tests.conftest import wait_for

    rig.fake_model.latency = 0.2
    supervisor = rig.start_workers(2)
    pids = supervisor.pids()
    burst = Burst(rig.post, people=30)
    url = rig.settings.database_url or ""
    admin = psycopg2.connect(url)
    admin.autocommit = True
    killed = 0
    try:
        for _ in range(rounds):
            burst.send(40, pause=0.03)
            wait_for(lambda: rig.fake_model.in_flight > 0, timeout=20, interval=0.01)
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (url.rsplit("/", 1)[-1],),
                )
                killed += cur.fetchone()[0]
        burst.send(20, pause=0.03)
    finally:
        admin.close()
    return finish(rig, burst, f"{killed} DB connections killed"), supervisor, pids, killed


def many_processes(rig: Rig, web_post: Callable[[dict[str, str]], Any]) -> Tally:
    """3 worker processes, texts posted from 4 threads through `web_post` (2 gunicorn processes)."""
    rig.fake_model.latency = 0.1
    rig.start_workers(3)
    burst = Burst(web_post, people=30)
    senders = [threading.Thread(target=burst.send, args=(25, 0.01)) for _ in range(4)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    return finish(rig, burst, "2 web + 3 workers (PostgreSQL)")


@dataclass
class DevRestart:
    """What `dev_restart_with_retry_pending` saw: the tally, the retry's timing, and `smsgw dev`'s output."""

    tally: Tally
    retry_delay: float  # the agent's retry_delay (RQ jitters it by up to 25%, in whole seconds)
    failed_at: float  # wall clock: the first attempt's model call failed
    scheduled_for: float | None  # wall clock: when RQ scheduled the retry (its log line)
    retry_ran_at: float | None  # wall clock: the retried model call reached the model
    replied_at: float  # wall clock: the reply reached Twilio (or the wait gave up)
    restart_s: float  # `smsgw dev` stopped and answering again
    output: str  # everything `smsgw dev` printed
    restarted_at_offset: int  # where the output of the stop and the second start begins

    @property
    def late_s(self) -> float | None:
        """How long after its scheduled time the retry ran (negative: early)."""
        if self.scheduled_for is None or self.retry_ran_at is None:
            return None
        return self.retry_ran_at - self.scheduled_for


RETRY_SCHEDULED = re.compile(
    r"scheduled for retry at (\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d:\d\d)"
)


def dev_restart_with_retry_pending(
    fake_model, fake_twilio, workdir: Path, retry_delay: float = 8.0
) -> DevRestart:
    """`smsgw dev` (its own SQLite and embedded Redis) answers a text whose first model call fails, so RQ
    schedules the retry `retry_delay` s later; while it waits, `smsgw dev` is stopped (SIGTERM) and
    started again, as after editing `.env`. The retry must still run, once, on time."""
    from datetime import datetime

    from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_BASE_URL, free_port, wait_for

    instance = workdir / "instance"
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_", "REDIS_", "DATABASE_"))
    }
    env.update(
        SMSGW_INSTANCE_PATH=str(instance),
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_API_BASE_URL=fake_twilio.url,
        PUBLIC_BASE_URL=PUBLIC_BASE_URL,
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=fake_model.url + "/v1",
        PYTHONUNBUFFERED="1",
    )
    log_path = workdir / "dev.log"

    def start() -> subprocess.Popen:
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "dev", "--port", str(port)],
                cwd=str(workdir), env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "smsgw dev did not exit cleanly on SIGTERM"

    def output() -> str:
        return log_path.read_text(errors="replace")

    model_calls: list[float] = []

    def responder(body: dict[str, Any]) -> str:
        model_calls.append(time.time())
        return token_responder(body)

    fake_model.responder = responder
    fake_model.fail_next(status=503)  # the first attempt fails; RQ schedules the retry
    proc = start()
    try:
        wait_for(lambda: _dev_answers(port), timeout=60, message="smsgw dev up")
        _set_retry_delay(instance, retry_delay)
        burst = Burst(lambda form: _post_signed(port, form), people=1)
        burst.send(1)
        fake_model.wait_for_requests(1, timeout=30)
        failed_at = time.time()
        wait_for(lambda: "scheduled for retry" in output(), message="retry scheduled")
        restarted_at_offset = len(output())
        restart_began = time.monotonic()
        stop(proc)
        proc = start()
        wait_for(lambda: _dev_answers(port), timeout=60, interval=0.05, message="smsgw dev up again")
        restart_s = time.monotonic() - restart_began
        with contextlib.suppress(AssertionError):  # the tally says what is missing
            wait_for(
                lambda: burst.all_answered(fake_twilio), timeout=45, interval=0.1, message="the retried reply"
            )
        replied_at = time.time()
    finally:
        if proc.poll() is None:
            stop(proc)
        fake_model.responder = token_responder
    found = RETRY_SCHEDULED.search(output())
    return DevRestart(
        tally=burst.tally(fake_twilio, "smsgw dev restarted with a retry pending"),
        retry_delay=retry_delay,
        failed_at=failed_at,
        scheduled_for=datetime.fromisoformat(found.group(1)).timestamp() if found else None,
        retry_ran_at=model_calls[0] if model_calls else None,
        replied_at=replied_at,
        restart_s=restart_s,
        output=output(),
        restarted_at_offset=restarted_at_offset,
    )


def _dev_answers(port: int) -> bool:
    """True when something answers HTTP on the port."""
    import requests

    try:
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        return True
    except requests.RequestException:
        return False


def _post_signed(port: int, form: dict[str, str]) -> None:
    """POST a signed inbound webhook to a gateway on `port`."""
    import requests

    from tests.conftest import PUBLIC_BASE_URL, sign

    headers = {"X-Twilio-Signature": sign(PUBLIC_BASE_URL + "/twilio/sms", form)}
    response = requests.post(f"http://127.0.0.1:{port}/twilio/sms", data=form, headers=headers, timeout=10)
    assert response.status_code == 200, response.text


def _set_retry_delay(instance: Path, seconds: float) -> None:
    """Give the dev gateway's default agent one retry, `seconds` after a failure."""
    from gateway.conversations.agents import default_agent
    from gateway.storage import db
    from gateway.storage.models import Agent

    db.init_database(f"sqlite:///{instance / 'smsgw.sqlite3'}")
    with db.database.connection_context():
        default_agent()
        Agent.update(retry_attempts=1, retry_delay=seconds).execute()
    db.database.close()


class Gunicorn:
    """`gunicorn --workers N 'gateway:create_app()'` on a free port, for the multi-process fault."""

    def __init__(self, settings: Settings, log_path: Path, workers: int = 2) -> None:
        """Start it; `post(form)` sends a signed webhook to it once `wait_ready()` returned."""
        from tests.conftest import free_port

        self.port = free_port()
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads", "4",
             "--bind", f"127.0.0.1:{self.port}", "gateway:create_app()"],
            cwd=str(ROOT), env=worker_env(settings), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        import requests

        self._session = requests.Session()

    def answers(self) -> bool:
        """True when it answers HTTP."""
        import requests

        try:
            requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
            return True
        except requests.RequestException:
            return False

    def post(self, form: dict[str, str]) -> None:
        """POST a signed inbound webhook; assert Twilio would get its 200."""
        from tests.conftest import PUBLIC_BASE_URL, sign

        headers = {"X-Twilio-Signature": sign(PUBLIC_BASE_URL + "/twilio/sms", form)}
        url = f"http://127.0.0.1:{self.port}/twilio/sms"
        response = self._session.post(url, data=form, headers=headers, timeout=10)
        assert response.status_code == 200, response.text

    def stop(self) -> None:
        """Stop gunicorn and its workers."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.proc.kill()
        self._log.close()


# --- setting a rig up (the fault tests' fixtures and the bench share these) -----------------------


def rig_settings(database_url: str, redis_url: str, fake_twilio, fake_model, instance_path: Path) -> Settings:
    """Settings for a fault run: the fakes, and short intervals (sweep every 1 s, heartbeats every 0.5 s)."""
    from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, GATEWAY_API_KEY, PUBLIC_BASE_URL

    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_base_url=fake_twilio.url,
        public_base_url=PUBLIC_BASE_URL,
        openai_api_key="sk-test",
        openai_base_url=fake_model.url + "/v1",
        openai_model="fake-model",
        gateway_api_key=GATEWAY_API_KEY,
        instance_path=str(instance_path),
        queue_prefix=f"faults-{uuid.uuid4().hex[:8]}",
        model_timeout=1.0,
        worker_concurrency=50,
        database_pool_size=5,
        sweep_interval=1.0,
        sweep_min_age=1.0,
        worker_heartbeat_interval=0.5,
    )


def prepare_app(settings: Settings, fake_model):
    """The web app on an upgraded database; the default agent retries often and at once; token replies."""
    from gateway import create_app
    from gateway.conversations.agents import default_agent
    from gateway.storage import db
    from gateway.storage.models import Agent

    app = create_app({"TESTING": True, "SETTINGS": settings})
    db.upgrade()
    with db.database.connection_context():
        default_agent()
        # Flaky services are retried at once and often enough that a text is never given up on.
        Agent.update(retry_attempts=12, retry_delay=0).execute()
    fake_model.responder = token_responder
    return app


def create_postgres_database(base: str) -> tuple[str, Callable[[], None]]:
    """A new database on the server of `base`; its URL and how to drop it."""
    import psycopg2
    from psycopg2 import sql

    name = f"smsgw_faults_{uuid.uuid4().hex[:10]}"

    def run(statement: str) -> None:
        admin = psycopg2.connect(base)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(sql.SQL(statement).format(sql.Identifier(name)))
        admin.close()

    run("CREATE DATABASE {}")
    return base.rsplit("/", 1)[0] + "/" + name, lambda: run("DROP DATABASE IF EXISTS {} WITH (FORCE)")


class PrivatePostgres:
    """A PostgreSQL server of the scenario's own (initdb in a temporary folder, a free port), so it can be
    restarted without touching the machine's. Needs PostgreSQL's server binaries (Debian's packages)."""

    def __init__(self) -> None:
        """initdb and start; as root the server runs as the `postgres` user, as PostgreSQL requires."""
        import glob
        import socket
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            raise RuntimeError("PostgreSQL's server binaries are not installed (pg_ctl not found)")
        self.bin = Path(found[-1]).parent
        # Its own folder under /tmp: pytest's are private to root, and the server runs as postgres.
        self.folder = Path(tempfile.mkdtemp(prefix="smsgw-pg-"))
        self.data = self.folder / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            subprocess.run(["chown", "postgres", str(self.folder)], check=True)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-500:]}")

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data}"
        self._run(
            "pg_ctl", action, "-D", str(self.data), "-w", "-o", options, "-l", str(self.data / "log"), *extra
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._ctl("start")

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server fast (every connection is cut), keep it down `down_for` seconds, start it."""
        self._ctl("stop", "-m", "fast")
        time.sleep(down_for)
        self._ctl("start")

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        import shutil

        with contextlib.suppress(subprocess.SubprocessError, OSError, RuntimeError):
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def database_restart(
    rig: Rig, server: PrivatePostgres, down_for: float = 3.0
) -> tuple[Tally, Supervisor, list[int]]:
    """PostgreSQL stopped for `down_for` seconds while replies are in flight, then started again (no texts
    arrive meanwhile: the web needs the database to record them)."""
    from tests.conftest import wait_for

    rig.fake_model.latency = 0.3
    supervisor = rig.start_workers(2)
    pids = supervisor.pids()
    burst = Burst(rig.post, people=30)
    burst.send(50, pause=0.02)
    wait_for(lambda: rig.fake_model.in_flight > 0, timeout=20, interval=0.01)
    server.restart(down_for)
    burst.send(50, pause=0.03)
    return finish(rig, burst, f"PostgreSQL down {down_for:.0f} s, restarted"), supervisor, pids
