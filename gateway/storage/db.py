"""The database: one URL, a proxy that SQLite and PostgreSQL swap behind, and schema upgrades."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlparse, urlunparse

from peewee import (
    Database,
    DatabaseProxy,
    InterfaceError,
    OperationalError,
    PostgresqlDatabase,
    SqliteDatabase,
)
from playhouse.db_url import connect as connect_url
from playhouse.migrations import Runner

from gateway.config import Settings
from gateway.logs import safe_url

log = logging.getLogger(__name__)

database = DatabaseProxy()

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# WAL lets the web process read while workers write; busy_timeout makes writers queue up for
# the lock instead of failing with "database is locked"; NORMAL sync is safe under WAL.
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 10000,
    "synchronous": "normal",
    "foreign_keys": 1,
    # No checkpoint inside a request's commit (it would run under the writer queue and stall
    # every writer behind it): a background thread checkpoints instead (_checkpoint_loop).
    "wal_autocheckpoint": 0,
}
# Seconds between the background WAL checkpoints of each process.
CHECKPOINT_INTERVAL = 1.0


# One idle connection per SQLite file, open for the life of the process. SQLite checkpoints the
# WAL (milliseconds of fsync) whenever the LAST connection to a file closes; with this one
# open, closing a request's or a job's connection stays cheap. Checkpoints still happen as WAL
# pages accumulate (wal_autocheckpoint).
_sqlite_anchors: dict[str, tuple[sqlite3.Connection, threading.Event]] = {}
_anchors_lock = threading.Lock()


def _anchor_sqlite(path: str | None) -> None:
    """Keep one connection to `path` open while the process uses it; it also checkpoints the WAL.

    A process uses one database; when it moves to another (tests do), the old anchor goes.
    """
    with _anchors_lock:
        for other in [p for p in _sqlite_anchors if p != path]:
            conn, stop = _sqlite_anchors.pop(other)
            stop.set()
        if path is not None and path not in _sqlite_anchors:
            anchor = sqlite3.connect(path, check_same_thread=False)
            # SQLite opens the WAL lazily: read once so this connection holds it open.
            anchor.execute("PRAGMA journal_mode=wal").fetchall()
            anchor.execute("SELECT count(*) FROM sqlite_master").fetchall()
            stop = threading.Event()
            _sqlite_anchors[path] = (anchor, stop)
            threading.Thread(
                target=_checkpoint_loop, args=(anchor, stop), name="sqlite-checkpoint", daemon=True
            ).start()


def _checkpoint_loop(anchor: sqlite3.Connection, stop: threading.Event) -> None:
    """Copy the WAL back into the database now and then, outside any request (PASSIVE: no waiting)."""
    try:
        while not stop.wait(CHECKPOINT_INTERVAL):
            try:
                anchor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                log.warning("WAL checkpoint failed; trying again", exc_info=True)
    finally:
        anchor.close()


# PostgreSQL URL schemes, all opened through playhouse.db_url's pooled class.
POSTGRES_SCHEMES = {"postgres", "postgresql", "postgres+pool", "postgresql+pool"}


def open_database(url: str, pool_size: int = 20) -> Database:
    """Create (not connect) the peewee database for a `db_url`-style URL.

    PostgreSQL goes through `playhouse.db_url` with its pooled class, so the URL's query options
    reach the driver (`?sslmode=require`, `?options=-csearch_path%3Dsmsgw`) and a percent-encoded
    user or password (`p%40ss`) arrives decoded. Pool options in the URL win over the defaults.
    """
    parsed = urlparse(url)
    if parsed.scheme.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _anchor_sqlite(path)
        # timeout is sqlite3's own wait for the lock, in seconds, on top of busy_timeout.
        return connect_url(url, pragmas=SQLITE_PRAGMAS, timeout=10)
    if parsed.scheme in POSTGRES_SCHEMES:
        # Threads in the worker share a bounded pool; a job waits for a free connection
        # rather than opening one per conversation in flight.
        defaults = {"max_connections": pool_size, "stale_timeout": 300, "timeout": 30}
        given = {key for key, _ in parse_qsl(parsed.query, keep_blank_values=True)}
        pooled = urlunparse(parsed._replace(scheme="postgresql+pool"))
        return connect_url(
            pooled,
            unquote_password=True,
            unquote_user=True,
            **{key: value for key, value in defaults.items() if key not in given},
        )
    return connect_url(url)


class _WriteLock:
    """One writer at a time across this machine's processes, without SQLite's sleepy busy handler.

    SQLite's busy handler polls with sleeps of up to 100 ms, which under a burst of webhooks is
    what the slowest requests wait for. Writers here queue on a threading lock (within the
    process) and an flock on a file beside the database (across processes): both wake the next
    writer the moment the lock is released.
    """

    def __init__(self) -> None:
        """No lock file yet: `configure` opens it for a SQLite database."""
        self._thread_lock = threading.RLock()
        self._local = threading.local()
        self._fd: int | None = None

    def configure(self, path: str | None) -> None:
        """Use the lock file beside SQLite database `path` (None: no cross-process lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if path:
            self._fd = os.open(path + ".writelock", os.O_RDWR | os.O_CREAT, 0o644)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the write lock (re-entrant within a thread)."""
        with self._thread_lock:
            depth = getattr(self._local, "depth", 0)
            if depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
                if depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)


_write_lock = _WriteLock()


@contextmanager
def write_transaction() -> Iterator[None]:
    """A transaction that reads then writes; on SQLite it takes the write lock up front.

    With a plain (deferred) BEGIN, two SQLite connections that both read before writing can
    deadlock, and one fails at once with "database is locked"; BEGIN IMMEDIATE under the
    machine-wide writer queue (`_WriteLock`) makes them wait their turn. PostgreSQL needs nothing
    special: its row locks do the same.
    """
    if not is_sqlite():
        with database.atomic():
            yield
        return
    with _write_lock.hold(), database.atomic(lock_type="IMMEDIATE"):
        yield


def init_database(url: str, pool_size: int = 20) -> Database:
    """Point the proxy at the database for `url` and return it."""
    current = database.obj
    if current is not None and not current.is_closed():
        current.close()
    db = open_database(url, pool_size=pool_size)
    database.initialize(db)
    path = url.split("sqlite:///", 1)[-1] if url.startswith("sqlite") else None
    path = path if path and path != ":memory:" else None
    _write_lock.configure(path)
    if path is None:
        _anchor_sqlite(None)  # no SQLite file: let go of the one used before, if any
    return db


class DatabaseUnavailable(RuntimeError):
    """The database DATABASE_URL names cannot be used; the message says what and where, in one line."""


def open_from_settings(settings: Settings, pool_size: int | None = None, *, check: bool = True) -> Database:
    """Point the proxy at the settings' database, checking that it can be used.

    Only the default SQLite file's folder (in the instance folder) is created; a DATABASE_URL
    whose folder does not exist, a URL of an unknown kind, or a database that does not answer
    raises DatabaseUnavailable with one line naming the URL (password hidden) and the reason.
    """
    url = settings.resolved_database_url()
    where = safe_url(url)
    scheme = urlparse(url).scheme
    if not (scheme.startswith("sqlite") or scheme in POSTGRES_SCHEMES):
        raise DatabaseUnavailable(
            f"DATABASE_URL {where}: unknown kind of database {scheme or url!r}; use "
            "sqlite:////path/to/file.db or postgresql://user:password@host:5432/dbname"
        )
    if scheme.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        folder = Path(path).parent if path and path != ":memory:" else None
        if folder is not None and not folder.is_dir():
            if settings.database_url:
                raise DatabaseUnavailable(
                    f"DATABASE_URL {where}: the folder {folder} does not exist; create it or fix the URL"
                )
            folder.mkdir(parents=True, exist_ok=True)  # the instance folder: ours to create
    try:
        db = init_database(url, pool_size=pool_size or settings.database_pool_size)
        if check:
            db.connect(reuse_if_open=True)
            db.close()
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseUnavailable(f"cannot open the database {where}: {reason}") from None
    return db


def is_unreachable(error: BaseException) -> bool:
    """True for the errors of a database that went away or is busy (a restart, a terminated
    backend, a locked SQLite file): worth trying again later, not a bug."""
    return isinstance(error, (OperationalError, InterfaceError))


def is_postgres() -> bool:
    """True when the proxy points at PostgreSQL."""
    return isinstance(database.obj, PostgresqlDatabase)


def is_sqlite() -> bool:
    """True when the proxy points at SQLite."""
    return isinstance(database.obj, SqliteDatabase)


def upgrade() -> list[str]:
    """Apply every migration not yet applied; return the names applied now."""
    runner = Runner(database.obj, directory=str(MIGRATIONS_DIR))
    return runner.up()


def init_app(app) -> None:
    """A connection per request thread: pooled ones go back to the pool after each request.

    A SQLite connection stays open with its thread (gunicorn's threads live long): opening one
    costs a schema read and four PRAGMAs, which would be most of a webhook's database time.
    """

    @app.before_request
    def _connect() -> None:
        database.connect(reuse_if_open=True)

    @app.teardown_appcontext
    def _close(exc: BaseException | None) -> None:
        if database.is_closed():
            return
        if is_sqlite() and not database.in_transaction():
            return
        database.close()
