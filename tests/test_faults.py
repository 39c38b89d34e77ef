"""Faults an operator meets, on real processes: workers SIGKILLed, Redis stopped, flaky model and Twilio,
database connections killed, `smsgw dev` restarted, several web and worker processes at once.

Each test sends a burst of texts and prints what the fake Twilio saw: texts sent, answered, lost,
answered twice (tests/fault_rig.py). Any lost or doubled text fails the test. Intervals are short
through settings (sweep every second, worker heartbeats every half second), never through sleeps.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from gateway.config import Settings
from gateway.storage import db
from tests.conftest import (
    ROOT,
    post_twilio,
    wait_for,
)
from tests.fault_rig import (
    Gunicorn,
    PrivatePostgres,
    Rig,
    Supervisor,
    Tally,
    create_postgres_database,
    database_kills,
    database_restart,
    dev_restart_with_retry_pending,
    flaky_services,
    kill_storm,
    many_processes,
    prepare_app,
    redis_outage,
    rig_settings,
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


def test_dev_restart_with_a_retry_pending_runs_it_on_time(fake_model, fake_twilio, tmp_path, capsys):
    """`smsgw dev` stopped (SIGTERM) and started again while a reply's retry waits: it runs, once."""
    run = dev_restart_with_retry_pending(fake_model, fake_twilio, tmp_path, retry_delay=8)
    with capsys.disabled():
        print(
            f"\n  retry due {run.retry_delay:g} s after the failure; its reply came "
            f"{run.replied_at - run.failed_at:.1f} s after it"
        )
    report(run.tally, capsys)
    assert run.scheduled_for is not None and run.retry_ran_at is not None  # scheduled, then run
    # The first attempt's failure is logged with its traceback; stopping and starting print none.
    assert "Traceback" not in run.output[run.restarted_at_offset :]
    assert run.output.count("stopping: worker, then web, then Redis") == 2
