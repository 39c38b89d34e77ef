"""Shared fixtures: a Redis server of our own, a fresh database per test, the fakes, a worker."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import SimpleWorker as RQSimpleWorker
from twilio.request_validator import RequestValidator

from gateway import create_app
from gateway.config import Settings, settings_to_env
from workers.pool import PromptCommandChannel

ROOT = Path(__file__).resolve().parent.parent
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "0" * 32
PUBLIC_BASE_URL = "https://sms.example.test"
GATEWAY_API_KEY = "test-gateway-key"


class SimpleWorker(PromptCommandChannel, RQSimpleWorker):
    """RQ's SimpleWorker, for running queued jobs in the test's process, ending its burst promptly.

    Stock, its teardown can wait out RQ's 60 s command-channel poll (see PromptCommandChannel).
    """


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """The redis-server to start: $REDIS_SERVER, then PATH."""
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server not found: `make test` installs it; or set REDIS_SERVER")
    return binary


class RedisServer:
    """A redis-server process the tests own: started on a free port, stopped and restarted at will."""

    def __init__(self, workdir: Path) -> None:
        """Pick a port and a working folder; nothing starts yet."""
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Stop the server (as if Redis went down)."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """One Redis server for the session; only this server is ever flushed."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_conn(redis_server: RedisServer) -> Iterator[Redis]:
    """A client on the test Redis, flushed before each test (the server is ours alone)."""
    if redis_server.proc is None:
        redis_server.start()
    from gateway.twilio.webhooks import WEB_REDIS

    WEB_REDIS.ok()  # an outage a previous test staged is over: enqueue at once again
    conn = Redis.from_url(redis_server.url)
    conn.flushdb()
    yield conn
    conn.close()


def _backends() -> list[str]:
    """SQLite always; PostgreSQL too when TEST_DATABASE_URL names one."""
    return ["sqlite", "postgres"] if os.environ.get("TEST_DATABASE_URL") else ["sqlite"]


def _reset_postgres(url: str) -> None:
    """Empty every table (the schema stays, as `smsgw db upgrade` left it): a fresh database, fast.

    TRUNCATE, not DELETE (which is faster on a few rows): a truncated table starts with empty
    files, so rows come back in the order they were written, as on a new database; after DELETE
    and a vacuum, new rows fill the old pages and a query without ORDER BY answers in another order.
    """
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migration'"
        )
        tables = [row[0] for row in cur.fetchall()]
        if tables:
            quoted = ", ".join('"' + t + '"' for t in tables)
            cur.execute(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE")
    conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A database of this test session's own on the TEST_DATABASE_URL server, dropped at the end.

    Its own database (not TEST_DATABASE_URL's) so that test runs sharing a server never wipe
    each other's tables.
    """
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        yield None
        return
    import psycopg2
    from psycopg2 import sql

    name = f"smsgw_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(base)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield base.rsplit("/", 1)[0] + "/" + name
    with admin.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    admin.close()


@pytest.fixture(params=_backends())
def database_url(request, tmp_path, postgres_url) -> str:
    """A fresh, empty database: a SQLite file, or this session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.sqlite3'}"
    _reset_postgres(postgres_url)
    return postgres_url


@pytest.fixture
def fake_twilio() -> Iterator:
    """A loopback fake of Twilio's REST API (Messages, IncomingPhoneNumbers, media)."""
    from tests.fakes import FakeTwilio

    fake = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_model() -> Iterator:
    """A loopback fake of an OpenAI-compatible chat completions API."""
    from tests.fakes import FakeModel

    fake = FakeModel()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def settings(database_url, redis_server, redis_conn, fake_twilio, fake_model, tmp_path) -> Settings:
    """Settings pointing at the test database, Redis and the loopback fakes."""
    return Settings(
        database_url=database_url,
        redis_url=redis_server.url,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_base_url=fake_twilio.url,
        public_base_url=PUBLIC_BASE_URL,
        openai_api_key="sk-test",
        openai_base_url=fake_model.url + "/v1",
        openai_model="fake-model",
        gateway_api_key=GATEWAY_API_KEY,
        instance_path=str(tmp_path / "instance"),
        queue_prefix=f"test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def app(settings):
    """The gateway app on a freshly upgraded database."""
    from gateway.storage import db

    app = create_app({"TESTING": True, "SETTINGS": settings})
    db.upgrade()
    yield app
    if not db.database.is_closed():
        db.database.close()


@pytest.fixture
def client(app):
    """Flask's test client."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """Flask's CLI runner."""
    return app.test_cli_runner()


def sign(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    """The X-Twilio-Signature Twilio would send for a POST of `params` to `url`."""
    return RequestValidator(token).compute_signature(url, params)


def post_twilio(client, path: str, params: dict[str, str], *, signature: str | None = "auto", **kw):
    """POST a form to a Twilio webhook path with a real signature computed for the public URL."""
    headers = dict(kw.pop("headers", {}))
    if signature == "auto":
        signature = sign(PUBLIC_BASE_URL + path, params)
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return client.post(path, data=params, headers=headers, **kw)


class WorkerProcess:
    """`smsgw worker` as a real process, with the test settings in its environment."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        """Remember how to start it; nothing starts yet."""
        self.settings = settings
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the worker process."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_"))}
        env.update(settings_to_env(self.settings))
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "worker"],
            cwd=str(ROOT),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """SIGKILL the worker: no shutdown, as when a machine dies."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        """Ask the worker to stop (SIGTERM, a warm shutdown) and wait for it."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def log(self) -> str:
        """What the worker printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def configured(app, settings):
    """Jobs run in this process (workers.jobs called directly, SimpleWorker) see the test settings."""
    from workers import context

    context.configure(settings)
    yield settings
    context.configure(None)


@pytest.fixture
def worker(app, settings, tmp_path) -> Iterator[WorkerProcess]:
    """A running `smsgw worker` process on the test settings (the schema exists already)."""
    proc = WorkerProcess(settings, tmp_path / "worker.log")
    proc.start()
    yield proc
    proc.stop()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail with `message` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture
def settings_with(settings):
    """Derive settings with some fields changed: `settings_with(openai_base_url=None)`."""
    return lambda **changes: settings.model_copy(update=changes)
