"""Faults an operator meets, on real processes: workers SIGKILLed, Redis stopped, flaky model and Twilio,
database connections killed, `smsgw dev` restarted, several web and worker processes at once.

Each test sends a burst of texts and prints what the fake Twilio saw: texts sent, answered, lost,
answered twice (tests/fault_rig.py). Any lost or doubled text fails the test. Intervals are short
through settings (sweep every second, worker heartbeats every half second), never through sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gateway.config import Settings
from gateway.storage import db
from tests.conftest import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PUBLIC_BASE_URL,
    ROOT,
    free_port,
    post_twilio,
    sign,
    wait_for,
)
from tests.fault_rig import (
    Burst,
    Gunicorn,
    PrivatePostgres,
    Rig,
    Supervisor,
    Tally,
    create_postgres_database,
    database_kills,
    database_restart,
    flaky_services,
    kill_storm,
    many_processes,
    prepare_app,
    redis_outage,
    rig_settings,
    token_responder,
)

SMS = "/twilio/sms"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def fault_db(request, tmp_path):
    """The database of a fault test: SQLite, or (param "postgres") a PostgreSQL database of its own.

    The PostgreSQL tests need a server: TEST_DATABASE_URL's, else scripts/ensure-postgres.sh's.
    """
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'faults.sqlite3'}"
        return
    if backend == "private-postgres":  # a server of the test's own, which it may restart
        server = PrivatePostgres()
        request.node.postgres_server = server
        url, drop = create_postgres_database(server.url)
        yield url
        if db.database.obj is not None and not db.database.is_closed():
            db.database.close()
        drop()
        server.stop()
        return
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure-postgres.sh")], check=True)
        base = DEFAULT_PG
    url, drop = create_postgres_database(base)
    yield url
    if db.database.obj is not None and not db.database.is_closed():
        db.database.close()
    drop()


@pytest.fixture
def fault_settings(fault_db, redis_server, redis_conn, fake_twilio, fake_model, tmp_path) -> Settings:
    """Test settings with short intervals: a sweep every second, heartbeats every half second."""
    return rig_settings(fault_db, redis_server.url, fake_twilio, fake_model, tmp_path / "instance")


@pytest.fixture
def fault_app(fault_settings, fake_model):
    """The web app (in this process) on an upgraded database; the default agent retries a lot, at once."""
    app = prepare_app(fault_settings, fake_model)
    yield app
    if not db.database.is_closed():
        db.database.close()


@pytest.fixture
def supervised(fault_settings, fault_app, tmp_path):
    """Start `n` supervised `smsgw worker` processes; all are stopped after the test."""
    started: list[Supervisor] = []

    def start(n: int = 1, settings: Settings | None = None) -> Supervisor:
        log_dir = tmp_path / f"workers{len(started)}"
        log_dir.mkdir()
        supervisor = Supervisor(settings or fault_settings, log_dir, count=n)
        supervisor.start()
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.stop()


def in_process_post(app):
    """post(form) through the app's test client (a signed webhook), asserting Twilio gets its 200."""
    client = app.test_client()

    def post(form: dict[str, str]) -> None:
        response = post_twilio(client, SMS, form)
        assert response.status_code == 200, response.get_data(as_text=True)

    return post


@pytest.fixture
def rig(fault_settings, fault_app, supervised, fake_model, fake_twilio, redis_server, redis_conn) -> Rig:
    """Everything a scenario of tests/fault_rig.py drives, the web app in this process."""
    post = in_process_post(fault_app)
    return Rig(fault_settings, post, fake_model, fake_twilio, redis_server, redis_conn, supervised)


def report(tally: Tally, capsys) -> None:
    """Print the tally's line (shown in the test run's output), then fail on any lost or doubled text."""
    with capsys.disabled():
        print(f"\n  {tally.line()}")
    tally.assert_exactly_once()


def test_burst_while_a_worker_is_sigkilled_20_times(rig, capsys):
    """100 texts from 30 people; one of two workers is SIGKILLed 20 times mid-reply and restarted."""
    tally, supervisor = kill_storm(rig, kills=20)
    report(tally, capsys)
    assert supervisor.restarts >= 20


def test_redis_stopped_for_10_seconds_mid_burst(rig, capsys):
    """Redis goes away for 10 s in the middle of a burst: the workers live on, nothing is lost or doubled."""
    tally, supervisor, pids = redis_outage(rig, seconds=10)
    report(tally, capsys)
    assert supervisor.pids() == pids and supervisor.restarts == 0  # the same processes throughout
    logs = supervisor.logs()
    # One line each way per worker process, not a line per poll. A dead pooled connection met
    # just after Redis is back may count as one more short outage, so allow one more per process.
    went, back = logs.count("Redis is unreachable"), logs.count("Redis is reachable again")
    assert 2 <= went <= 4 and back == went, (went, back)
    assert "Traceback" not in logs


def test_flaky_model_and_twilio(rig, capsys):
    """30% of model calls fail (5xx, hangs past the timeout) and 30% of Twilio sends (429, 5xx)."""
    report(flaky_services(rig, rate=0.3), capsys)
    assert rig.fake_model.faults_injected > 0 and rig.fake_twilio.faults_injected > 0


@pytest.mark.parametrize("fault_db", ["postgres"], indirect=True)
def test_database_connections_killed_mid_burst(rig, capsys):
    """pg_terminate_backend on every worker connection, twice, while replies are in flight."""
    tally, supervisor, pids, killed = database_kills(rig, rounds=2)
    report(tally, capsys)
    assert killed > 0
    assert supervisor.pids() == pids


@pytest.mark.parametrize("fault_db", ["private-postgres"], indirect=True)
def test_postgresql_restarted_while_replies_are_in_flight(request, rig, capsys):
    """A fast restart of PostgreSQL cuts every connection mid-reply: jobs are retried, workers live on."""
    tally, supervisor, pids = database_restart(rig, request.node.postgres_server)
    report(tally, capsys)
    assert supervisor.pids() == pids and supervisor.restarts == 0
    assert "Traceback" not in supervisor.logs()  # a database that went away is one line a job, not a bug


@pytest.mark.parametrize("fault_db", ["postgres"], indirect=True)
def test_two_web_and_three_worker_processes_keep_each_chat_in_order(rig, fault_settings, tmp_path, capsys):
    """2 gunicorn web processes and 3 worker processes on PostgreSQL: every text once, each chat in order."""
    web = Gunicorn(fault_settings, tmp_path / "gunicorn.log", workers=2)
    try:
        wait_for(web.answers, timeout=30, message="gunicorn up")
        report(many_processes(rig, web.post), capsys)
    finally:
        web.stop()


def _answers(port: int) -> bool:
    """True when something answers HTTP on the port."""
    try:
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        return True
    except requests.RequestException:
        return False


def test_dev_restart_with_a_retry_pending_runs_it_on_time(fake_model, fake_twilio, tmp_path, capsys):
    """`smsgw dev` stopped (SIGTERM) and started again while a reply's retry waits: it runs on time."""
    instance = tmp_path / "instance"
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
    log_path = tmp_path / "dev.log"

    def start() -> subprocess.Popen:
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "dev", "--port", str(port)],
                cwd=str(tmp_path), env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    fake_model.responder = token_responder
    fake_model.fail_next(status=503)  # the first attempt fails; RQ schedules the retry
    proc = start()
    try:
        wait_for(lambda: _answers(port), timeout=60, message="smsgw dev up")
        _set_retry_delay(instance, 8)
        burst = Burst(lambda form: _post_signed(port, form), people=1)
        burst.send(1)
        fake_model.wait_for_requests(1, timeout=30)
        failed_at = time.monotonic()
        wait_for(
            lambda: "scheduled for retry" in log_path.read_text(errors="replace"), message="retry scheduled"
        )
        before_restart = len(log_path.read_text(errors="replace"))
        stop(proc)
        proc = start()
        wait_for(
            lambda: burst.all_answered(fake_twilio), timeout=45, interval=0.1, message="the retried reply"
        )
        late = time.monotonic() - failed_at
    finally:
        if proc.poll() is None:
            stop(proc)
    tally = burst.tally(fake_twilio, "smsgw dev restarted with a retry pending")
    with capsys.disabled():
        print(f"\n  retry due 8 s after the failure; its reply came {late:.1f} s after it")
    report(tally, capsys)
    output = log_path.read_text(errors="replace")
    # The first attempt's failure is logged with its traceback; stopping and starting print none.
    assert "Traceback" not in output[before_restart:]
    assert output.count("stopping: worker, then web, then Redis") == 2


def _post_signed(port: int, form: dict[str, str]) -> None:
    """POST a signed inbound webhook to a gateway on `port`."""
    headers = {"X-Twilio-Signature": sign(PUBLIC_BASE_URL + SMS, form)}
    response = requests.post(f"http://127.0.0.1:{port}{SMS}", data=form, headers=headers, timeout=10)
    assert response.status_code == 200, response.text


def _set_retry_delay(instance: Path, seconds: float) -> None:
    """Give the dev gateway's default agent one retry, `seconds` after a failure."""
    from gateway.conversations.agents import default_agent
    from gateway.storage.models import Agent

    db.init_database(f"sqlite:///{instance / 'smsgw.sqlite3'}")
    with db.database.connection_context():
        default_agent()
        Agent.update(retry_attempts=1, retry_delay=seconds).execute()
    db.database.close()
