"""`smsgw dev`: the whole gateway on one machine, with no accounts needed."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
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


def run_dev(settings: Settings, host: str, port: int) -> None:
    """Start an embedded Redis if needed, upgrade the schema, then the worker and the web app."""
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

    db.open_from_settings(settings, pool_size=4)
    applied = db.upgrade()
    if applied:
        log.info("database schema: applied %s", ", ".join(applied))
    if emulator is not None:
        provision_numbers(emulator, settings)

    env = dict(os.environ)
    env.update(settings_to_env(settings))
    children.append(subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker"], env=env))

    if not settings.model_configured:
        log.warning("no model configured (OPENAI_API_KEY/OPENAI_BASE_URL): the offline responder answers")
    app = create_app({"SETTINGS": settings, "TWILIO_EMULATOR": emulator})
    log.info("gateway on http://%s:%d  (webhook: POST /twilio/sms)", host, port)
    print(dev_banner(host, port, generated_key, emulator is not None), flush=True)
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    finally:
        _stop_children()
