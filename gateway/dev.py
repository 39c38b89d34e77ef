"""`smsgw dev`: the whole gateway on one machine, with no accounts needed."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
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
    if not settings.twilio_configured:
        settings = settings.model_copy(update={"dev_outbox": True})
    return settings


def run_dev(settings: Settings, host: str, port: int) -> None:
    """Start an embedded Redis if needed, upgrade the schema, then the worker and the web app."""
    from gateway import create_app
    from gateway.storage import db

    instance = Path(settings.instance_path if settings.instance_path != "instance" else "instance").resolve()
    settings = dev_settings(settings, str(instance))
    children: list[subprocess.Popen] = []

    def _stop_children() -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()

    atexit.register(_stop_children)
    # SIGTERM (a process manager, `kill`) stops the children too, not only Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    if not settings.redis_url:
        redis_proc, url = start_embedded_redis(instance / "redis")
        children.append(redis_proc)
        settings = settings.model_copy(update={"redis_url": url})
        log.info("embedded Redis at %s (data in %s)", url, instance / "redis")

    db.init_database(settings.resolved_database_url(), pool_size=4)
    applied = db.upgrade()
    if applied:
        log.info("database schema: applied %s", ", ".join(applied))

    env = dict(os.environ)
    env.update(settings_to_env(settings))
    children.append(subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker"], env=env))

    if not settings.model_configured:
        log.warning("no model configured (OPENAI_API_KEY/OPENAI_BASE_URL): the offline responder answers")
    if not settings.twilio_configured:
        log.warning("no Twilio credentials: replies go to the dev outbox in the worker's log")
    app = create_app({"SETTINGS": settings})
    log.info("gateway on http://%s:%d  (webhook: POST /twilio/sms)", host, port)
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    finally:
        _stop_children()
