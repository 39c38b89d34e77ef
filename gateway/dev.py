"""`smsgw dev`: the whole gateway on one machine, with no accounts needed.

One process tree: this process serves the web app (in a thread) and supervises an embedded
redis-server (unless REDIS_URL is set) and one `smsgw worker`. The children run in sessions of
their own, so Ctrl+C in the terminal reaches only this process, which then stops them IN ORDER:
the worker first (a warm shutdown: jobs in flight finish, RQ's scheduler lock is released), then
the web app, then Redis (which saves its append-only file as it exits). A restart therefore finds
no stale locks, and a retry scheduled before it runs on time after it. Linux also stops the
children if this process is killed outright (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from redis import Redis

from gateway.config import Settings, settings_to_env

log = logging.getLogger(__name__)


def _free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_embedded_redis(data_dir: Path) -> tuple[subprocess.Popen, str]:
    """Start a redis-server of our own on a free loopback port; return it and its URL."""
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        raise SystemExit(
            "REDIS_URL is unset and no redis-server was found on PATH: install Redis "
            "(apt-get install redis-server, brew install redis) or set REDIS_URL."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    # Append-only file: queued replies survive a restart of `smsgw dev`.
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if Redis.from_url(url, socket_connect_timeout=0.2).ping():
                return proc, url
        except Exception:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("the embedded redis-server did not start")


def dev_settings(settings: Settings, instance_path: str) -> Settings:
    """Settings for development: the instance folder, and no signature checks without a token."""
    settings = settings.model_copy(update={"instance_path": instance_path})
    if not settings.twilio_auth_token and settings.twilio_validate_signatures:
        # Without a token there is nothing to check signatures against; say so loudly.
        log.warning("TWILIO_AUTH_TOKEN is unset: webhook signatures are not checked in `smsgw dev`")
        settings = settings.model_copy(update={"twilio_validate_signatures": False})
    return settings


def dev_banner(host: str, port: int, generated_key: str | None, dev_phone: bool) -> str:
    """What `smsgw dev` prints for a person: where the console and the dev phone are, and the key."""
    origin = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    lines = [f"  console:   {origin}/console"]
    if generated_key:
        lines.append(
            f"             sign in with {generated_key}  (generated: set GATEWAY_API_KEY to keep one)"
        )
    else:
        lines.append("             sign in with your GATEWAY_API_KEY")
    if dev_phone:
        lines.append(
            f"  dev phone: {origin}/dev/phone  (text the agent; replies come back through a Twilio emulator)"
        )
    return "\n".join(["", *lines, ""])


def _die_with_parent() -> None:
    """In a child, before exec: get SIGTERM when `smsgw dev` dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_child(child: subprocess.Popen, name: str, timeout: float = 30.0) -> None:
    """SIGTERM a child and wait for it (a worker lets its jobs finish); SIGKILL after `timeout`."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s; killing it", name, timeout)
        child.kill()
        child.wait(timeout=10)


class _Stop(Exception):
    """SIGTERM/SIGINT reached `smsgw dev`: shut down in order."""


def _raise_stop(signum: int, frame: object) -> None:
    """Signal handler: unwind the main thread into the ordered shutdown (once)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop


def run_dev(settings: Settings, host: str, port: int) -> None:
    """Start an embedded Redis if needed, upgrade the schema, then the worker and the web app."""
    from werkzeug.serving import make_server

    from gateway import create_app
    from gateway.dev_phone.setup import provision_numbers, start_twilio_emulator
    from gateway.storage import db

    instance = Path(settings.instance_path if settings.instance_path != "instance" else "instance").resolve()
    # No Twilio credentials: replies go to the built-in Twilio emulator, texts come from the dev phone.
    emulator = None
    if not settings.twilio_configured:
        emulator, settings = start_twilio_emulator(settings, host, port)
    generated_key = None
    if not settings.gateway_api_key:
        generated_key = secrets.token_urlsafe(12)
        settings = settings.model_copy(update={"gateway_api_key": generated_key})
    settings = dev_settings(settings, str(instance))
    redis_proc: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    server = None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        if not settings.redis_url:
            redis_proc, url = start_embedded_redis(instance / "redis")
            settings = settings.model_copy(update={"redis_url": url})
            log.info("embedded Redis at %s (data in %s)", url, instance / "redis")

        db.open_from_settings(settings, pool_size=4)
        applied = db.upgrade()
        if applied:
            log.info("database schema: applied %s", ", ".join(applied))
        if emulator is not None:
            provision_numbers(emulator, settings)

        env = dict(os.environ)
        env.update(settings_to_env(settings))
        worker = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "worker"],
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

        if not settings.model_configured:
            log.warning("no model configured (OPENAI_API_KEY/OPENAI_BASE_URL): the offline responder answers")
        app = create_app({"SETTINGS": settings, "TWILIO_EMULATOR": emulator})
        server = make_server(host, port, app, threaded=True)
        web = threading.Thread(target=server.serve_forever, name="web", daemon=True)
        web.start()
        log.info("gateway on http://%s:%d  (webhook: POST /twilio/sms)", host, port)
        print(dev_banner(host, port, generated_key, emulator is not None), flush=True)
        while worker.poll() is None:
            time.sleep(0.5)
        log.error("the worker exited with status %s; stopping", worker.returncode)
    except _Stop:
        log.info("stopping: worker, then web, then Redis")
    finally:
        # Ctrl+C while stopping would only leave a child behind: the order below matters.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if worker is not None:
            stop_child(worker, "the worker")
        if server is not None:
            server.shutdown()
        if emulator is not None:
            emulator.stop()
        if redis_proc is not None:
            stop_child(redis_proc, "redis-server", timeout=15)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("stopped")
