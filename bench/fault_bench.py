"""Faults, timed: for each fault of tests/test_faults.py, texts sent / answered once / lost / answered twice,
and the p50 and max time from a text to its reply, next to a no-fault baseline measured in the same run.
The rows use the fault tests' short intervals (heartbeats every 0.5 s, a sweep every 1 s) except one
SIGKILL run with the defaults a user runs (5 s and 10 s) and the `smsgw dev` restart (its own defaults).

    .venv/bin/python bench/fault_bench.py                  # SQLite faults; PostgreSQL ones if it answers
    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/fault_bench.py
    .venv/bin/python bench/fault_bench.py "smsgw dev"     # only the rows whose name contains a word given

Everything is real but the model and Twilio (loopback fakes from tests/fakes): a redis-server of its
own, `smsgw worker` processes (restarted by a supervisor when killed), the web app (in this process;
2 gunicorn processes for the multi-process run). The scenarios are tests/fault_rig.py's, so the
bench measures exactly what the fault tests check. Figures go to bench/results/fault_bench.json too.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.config import Settings  # noqa: E402
from gateway.storage import db  # noqa: E402
from tests.conftest import (  # noqa: E402
    ACCOUNT_SID,
    AUTH_TOKEN,
    RedisServer,
    post_twilio,
    wait_for,
)
from tests.fakes import FakeModel, FakeTwilio  # noqa: E402
from tests.fault_rig import (  # noqa: E402
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
    no_fault,
    one_kill,
    prepare_app,
    redis_outage,
    rig_settings,
)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
# The intervals a user runs with (gateway/config.py's defaults), instead of the fault tests' short ones.
DEFAULT_INTERVALS = {
    name: Settings.model_fields[name].default
    for name in ("worker_heartbeat_interval", "sweep_interval", "sweep_min_age")
}
DEV_RETRY_DELAY = 8.0  # the retry the `smsgw dev` restart leaves pending, as in tests/test_faults.py


def postgres_base() -> str | None:
    """A PostgreSQL server to create bench databases on, if one answers."""
    import psycopg2

    base = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") or DEFAULT_PG
    try:
        psycopg2.connect(base, connect_timeout=2).close()
    except psycopg2.Error:
        return None
    return base


# The PostgreSQL servers of their own that "private-postgres" scenarios restart, by database URL.
PRIVATE_SERVERS: dict[str, PrivatePostgres] = {}


def fresh_database(backend: str, workdir: Path, pg_base: str | None) -> tuple[str, Callable[[], None]]:
    """A new, empty database URL and how to drop it."""
    if backend == "sqlite":
        return f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.sqlite3'}", lambda: None
    if backend == "private-postgres":
        server = PrivatePostgres()
        url, drop = create_postgres_database(server.url)
        PRIVATE_SERVERS[url] = server

        def drop_all() -> None:
            drop()
            PRIVATE_SERVERS.pop(url).stop()

        return url, drop_all
    assert pg_base is not None
    return create_postgres_database(pg_base)


def run_scenario(
    name: str,
    backend: str,
    body: Callable[[Rig, Settings, Path], tuple[Tally, dict[str, Any]]],
    pg_base: str | None,
    update: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Set up a fresh Redis, fakes, database and app (settings changed by `update`); run `body`; stop
    everything; the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="fault-bench-"))
    redis_server = RedisServer(workdir)
    redis_server.start()
    fake_twilio = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN).start()
    fake_model = FakeModel().start()
    url, drop = fresh_database(backend, workdir, pg_base)
    settings = rig_settings(url, redis_server.url, fake_twilio, fake_model, workdir / "instance")
    settings = settings.model_copy(update=update or {})
    supervisors: list[Supervisor] = []
    from redis import Redis

    redis_conn = Redis.from_url(redis_server.url)
    try:
        app = prepare_app(settings, fake_model)
        client = app.test_client()

        def post(form: dict[str, str]) -> None:
            response = post_twilio(client, "/twilio/sms", form)
            assert response.status_code == 200

        def start_workers(n: int) -> Supervisor:
            log_dir = workdir / f"workers{len(supervisors)}"
            log_dir.mkdir()
            supervisor = Supervisor(settings, log_dir, count=n)
            supervisor.start()
            supervisors.append(supervisor)
            return supervisor

        rig = Rig(settings, post, fake_model, fake_twilio, redis_server, redis_conn, start_workers)
        began = time.monotonic()
        tally, extra = body(rig, settings, workdir)
        extra = {
            "heartbeat_s": settings.worker_heartbeat_interval,
            "sweep_s": settings.sweep_interval,
            **extra,
        }
        row = tally_row(name, backend, tally, began, extra)
    finally:
        for supervisor in supervisors:
            supervisor.stop()
        if db.database.obj is not None and not db.database.is_closed():
            db.database.close()
        db.init_database(f"sqlite:///{workdir / 'idle.sqlite3'}")  # let go of the bench database
        redis_conn.close()
        fake_model.stop()
        fake_twilio.stop()
        redis_server.stop()
        drop()
    return row


def tally_row(name: str, backend: str, tally: Tally, began: float, extra: dict[str, Any]) -> dict[str, Any]:
    """One row of the table: the tally's counts and text-to-reply times, and the scenario's own figures."""
    return {
        "fault": name,
        "backend": backend,
        "sent": tally.sent,
        "answered_once": tally.answered_once,
        "lost": len(tally.lost),
        "doubled": len(tally.doubled),
        "out_of_order": len(tally.out_of_order),
        "p50_s": round(sorted(tally.latencies)[len(tally.latencies) // 2], 2) if tally.latencies else None,
        "max_s": round(max(tally.latencies), 2) if tally.latencies else None,
        "wall_s": round(time.monotonic() - began, 1),
        **extra,
    }


def run_dev_restart(name: str) -> dict[str, Any]:
    """`smsgw dev` (its own SQLite, embedded Redis and worker, default intervals) restarted while a
    reply's retry is scheduled DEV_RETRY_DELAY s out: when RQ scheduled it, and how late it ran."""
    workdir = Path(tempfile.mkdtemp(prefix="fault-bench-dev-"))
    fake_twilio = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN).start()
    fake_model = FakeModel().start()
    try:
        began = time.monotonic()
        run = dev_restart_with_retry_pending(fake_model, fake_twilio, workdir, retry_delay=DEV_RETRY_DELAY)
        late = run.late_s
        extra = {
            "retry_delay_s": run.retry_delay,
            "retry_scheduled_after_s": round(run.scheduled_for - run.failed_at, 2)
            if run.scheduled_for is not None
            else None,
            "retry_late_s": round(late, 2) if late is not None else None,
            "restart_s": round(run.restart_s, 2),
        }
        return tally_row(name, "sqlite", run.tally, began, extra)
    finally:
        db.init_database(f"sqlite:///{workdir / 'idle.sqlite3'}")  # let go of the dev database
        fake_model.stop()
        fake_twilio.stop()


def _plain(scenario: Callable[[Rig], Tally]) -> Callable[[Rig, Settings, Path], tuple[Tally, dict[str, Any]]]:
    return lambda rig, settings, workdir: (scenario(rig), {})


def _one_kill(rig: Rig, settings: Settings, workdir: Path) -> tuple[Tally, dict[str, Any]]:
    tally, after_replacement = one_kill(rig)
    return tally, {"reply_after_replacement_started_s": round(after_replacement, 2)}


def _kill_storm(rig: Rig, settings: Settings, workdir: Path) -> tuple[Tally, dict[str, Any]]:
    tally, supervisor = kill_storm(rig, kills=20)
    return tally, {"restarts": supervisor.restarts}


def _redis(rig: Rig, settings: Settings, workdir: Path) -> tuple[Tally, dict[str, Any]]:
    tally, supervisor, pids = redis_outage(rig, seconds=10)
    return tally, {"same_worker_pids": supervisor.pids() == pids}


def _db_kill(rig: Rig, settings: Settings, workdir: Path) -> tuple[Tally, dict[str, Any]]:
    tally, supervisor, pids, killed = database_kills(rig, rounds=2)
    return tally, {"connections_killed": killed, "same_worker_pids": supervisor.pids() == pids}


def _db_restart(rig: Rig, settings: Settings, workdir: Path) -> tuple[Tally, dict[str, Any]]:
    tally, supervisor, pids = database_restart(rig, PRIVATE_SERVERS[settings.database_url or ""])
    return tally, {"same_worker_pids": supervisor.pids() == pids}


def _many(rig: Rig, settings: Settings, workdir: Path) -> tuple[Tally, dict[str, Any]]:
    web = Gunicorn(settings, workdir / "gunicorn.log", workers=2)
    try:
        wait_for(web.answers, timeout=30, message="gunicorn up")
        return many_processes(rig, web.post), {}
    finally:
        web.stop()


Scenario = Callable[[Rig, Settings, Path], tuple[Tally, dict[str, Any]]]
# (name, backend, scenario, settings changed from the fault tests'; None: run_dev_restart)
SCENARIOS: list[tuple[str, str, Scenario | None, dict[str, Any]]] = [
    ("no fault (baseline)", "sqlite", _plain(no_fault), {}),
    ("1 SIGKILL mid-reply", "sqlite", _one_kill, {}),
    ("1 SIGKILL mid-reply, default intervals", "sqlite", _one_kill, DEFAULT_INTERVALS),
    ("20 SIGKILLs, supervisor restarts", "sqlite", _kill_storm, {}),
    ("Redis down 10 s mid-burst", "sqlite", _redis, {}),
    ("30% model + 30% Twilio failures", "sqlite", _plain(flaky_services), {}),
    ("smsgw dev restarted, retry pending", "sqlite", None, {}),
    ("DB connections killed x2", "postgres", _db_kill, {}),
    ("PostgreSQL down 3 s, restarted", "private-postgres", _db_restart, {}),
    ("2 web + 3 workers", "postgres", _many, {}),
]


def main() -> int:
    """Run every scenario, print a table, write bench/results/fault_bench.json; 1 if any lost or doubled."""
    pg_base = postgres_base()
    rows = []
    only = [a for a in sys.argv[1:] if not a.startswith("-")]
    for name, backend, body, update in SCENARIOS:
        if only and not any(word.lower() in name.lower() for word in only):
            continue
        if backend == "postgres" and pg_base is None:
            print(f"{name}: not run (no PostgreSQL answering; set BENCH_DATABASE_URL)", flush=True)
            continue
        try:
            if body is None:
                row = run_dev_restart(name)
            else:
                row = run_scenario(name, backend, body, pg_base, update)
        except Exception:
            traceback.print_exc()
            row = {"fault": name, "backend": backend, "error": True}
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = (
        f"{'fault':40} {'db':16} {'sent':>5} {'once':>5} {'lost':>5} {'twice':>5} {'p50 s':>7} {'max s':>7}"
    )
    print("\n" + header)
    for row in rows:
        if row.get("error"):
            print(f"{row['fault']:40} {row['backend']:16} failed (see the traceback above)")
            continue
        print(
            f"{row['fault']:40} {row['backend']:16} {row['sent']:>5} {row['answered_once']:>5} "
            f"{row['lost']:>5} {row['doubled']:>5} {row['p50_s'] or 0:>7.2f} {row['max_s'] or 0:>7.2f}"
        )
    print()
    for row in rows:
        if row.get("reply_after_replacement_started_s") is not None:
            print(
                f"after a SIGKILL mid-reply (heartbeat {row['heartbeat_s']:g} s, "
                f"sweep {row['sweep_s']:g} s), the last reply went out "
                f"{row['reply_after_replacement_started_s']:.2f} s after the replacement worker started"
            )
        if "retry_late_s" in row:
            scheduled, late = row["retry_scheduled_after_s"], row["retry_late_s"]
            if late is None:
                ran = "it never ran"
            else:  # RQ keeps the due time in whole seconds, so a retry may run up to 1 s before it
                ran = f"it ran {abs(late):.2f} s {'after' if late >= 0 else 'before'} that time"
            print(
                f"smsgw dev restarted ({row['restart_s']:.1f} s) with a retry pending: RQ scheduled it "
                + (f"{scheduled:.1f} s after the failure" if scheduled is not None else "(no log line)")
                + f" (retry_delay {row['retry_delay_s']:g} s, jittered); {ran}"
            )
    results = BENCH_DIR / "results"
    results.mkdir(exist_ok=True)
    (results / "fault_bench.json").write_text(json.dumps(rows, indent=2))
    bad = [r for r in rows if r.get("error") or r.get("lost") or r.get("doubled")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
