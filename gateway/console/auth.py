"""Signing in to the console: the session cookie, CSRF tokens, and a pause after wrong keys.

The console signs in with GATEWAY_API_KEY (one secret to keep, the one that already guards /v1).
The session is Flask's signed cookie (SECRET_KEY, else a key derived from GATEWAY_API_KEY), HttpOnly,
SameSite=Lax, and Secure when PUBLIC_BASE_URL is https. It holds a fingerprint of the key it was
opened with, so changing GATEWAY_API_KEY signs every session out. Each session has a CSRF token
that every POST must echo (form field `csrf_token` or header `X-CSRF-Token`). Wrong keys are
counted per client address in Redis (in the process when Redis is down): after MAX_FAILURES in
FAILURE_WINDOW, sign-in pauses for that address until the window ends.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, redirect, render_template, request, session, url_for
from redis.exceptions import RedisError
from werkzeug.wrappers import Response

from gateway.console import bp

log = logging.getLogger(__name__)

# Wrong sign-ins one address may make in FAILURE_WINDOW before it has to wait for the window's end.
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
SESSION_LIFETIME = timedelta(hours=12)
COOKIE_NAME = "smsgw_console"
# Pages an anonymous visitor may open: the sign-in form (and the stylesheet and script it uses).
PUBLIC_ENDPOINTS = frozenset({"console.sign_in", "console.static"})

# The console's menu: (endpoint, label), shown when the page exists.
NAV = (
    ("console.chats", "Chats"),
    ("console.agents", "Agents"),
    ("console.numbers", "Numbers"),
    ("console.outbound", "Outbound SMS"),
    ("console.contacts", "Contacts"),
    ("dev_phone.phone", "Dev phone"),
)

# Fallback counter when Redis is unreachable: {address: (failures, window start)}.
_local_failures: dict[str, tuple[int, float]] = {}
_local_lock = threading.Lock()


@bp.record_once
def _configure_sessions(state) -> None:
    """The session cookie's key and flags, from settings."""
    configure_sessions(state.app)


def configure_sessions(app: Flask) -> None:
    """Set the app's secret key and session cookie flags for the console."""
    settings = app.config["SETTINGS"]
    app.secret_key = session_secret(settings.secret_key, settings.gateway_api_key)
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=(settings.public_base_url or "").startswith("https://"),
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["nav_links"] = lambda: [(e, label) for e, label in NAV if e in app.view_functions]


def session_secret(secret_key: str | None, api_key: str | None) -> str:
    """SECRET_KEY, else a key derived from GATEWAY_API_KEY, else a random one (nobody can sign in)."""
    if secret_key:
        return secret_key
    if api_key:
        return hashlib.sha256(b"smsgw console session\x00" + api_key.encode()).hexdigest()
    return secrets.token_hex(32)


def key_fingerprint(api_key: str) -> str:
    """What the session keeps of the key it was opened with (not the key)."""
    return hashlib.sha256(b"smsgw console key\x00" + api_key.encode()).hexdigest()[:32]


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def signed_in() -> bool:
    """True when the session was opened with the current GATEWAY_API_KEY."""
    api_key = current_app.config["SETTINGS"].gateway_api_key
    held = session.get("key")
    return bool(api_key and held and hmac.compare_digest(held, key_fingerprint(api_key)))


def csrf_ok() -> bool:
    """True when the request echoes this session's CSRF token."""
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    held = session.get("csrf") or ""
    return bool(held) and hmac.compare_digest(sent.encode(), held.encode())


@bp.before_request
def _guard() -> Response | None:
    """Every console URL but the sign-in form needs the session; every POST its CSRF token."""
    if request.method == "POST" and not csrf_ok():
        log.warning("console: refused a %s to %s without its CSRF token", request.method, request.path)
        return _refuse(
            400, "This form's security token is missing or out of date. Reload the page and try again."
        )
    if request.endpoint in PUBLIC_ENDPOINTS or signed_in():
        return None
    if request.method == "GET" and not request.path.endswith(".json"):
        return redirect(url_for("console.sign_in", next=request.full_path.rstrip("?")))
    return _refuse(401, "Sign in first.")


def _refuse(status: int, reason: str) -> Response:
    """A plain page that says why, with the status."""
    page = render_template("console/refused.html", reason=reason)
    return Response(page, status=status, mimetype="text/html")


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    """The sign-in form; POST checks the key (pausing an address after too many wrong ones)."""
    settings = current_app.config["SETTINGS"]
    error = None
    status = 200
    if not settings.gateway_api_key:
        error = "The console is off: set GATEWAY_API_KEY on the server and restart, then sign in with it."
    elif request.method == "POST":
        address = request.remote_addr or "unknown"
        wait = _paused_for(address)
        if wait:
            error = f"Too many wrong keys from your address. Try again in {_minutes(wait)}."
            status = 429
        elif hmac.compare_digest(
            (request.form.get("key") or "").strip().encode(), settings.gateway_api_key.encode()
        ):
            session.clear()
            session.permanent = True
            session["key"] = key_fingerprint(settings.gateway_api_key)
            csrf_token()
            return redirect(_safe_next(request.args.get("next")))
        else:
            _count_failure(address)
            log.warning("console: wrong sign-in key from %s", address)
            error = "That key is not right. Sign in with the gateway's GATEWAY_API_KEY."
            status = 401
    elif signed_in():
        return redirect(url_for("console.chats"))
    return render_template("console/sign_in.html", error=error), status


@bp.post("/sign-out")
def sign_out():
    """End the session."""
    session.clear()
    return redirect(url_for("console.sign_in"))


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only, never another site."""
    parts = urlsplit(target or "")
    if target and not parts.scheme and not parts.netloc and parts.path.startswith("/console"):
        return target
    return url_for("console.chats")


def _failure_key(address: str) -> str:
    """The Redis key counting an address's wrong sign-ins."""
    prefix = current_app.config["SETTINGS"].queue_prefix
    return f"{prefix}:console:sign-in-failures:{address}"


def _paused_for(address: str) -> float:
    """Seconds this address must still wait before trying again (0: it may try)."""
    redis = current_app.redis  # type: ignore[attr-defined]
    if redis is not None:
        try:
            count = int(redis.get(_failure_key(address)) or 0)
            return max(float(redis.ttl(_failure_key(address))), 1.0) if count >= MAX_FAILURES else 0.0
        except RedisError:
            log.warning("console: Redis unreachable; counting wrong sign-ins in this process")
    with _local_lock:
        count, since = _local_failures.get(address, (0, 0.0))
        left = since + FAILURE_WINDOW.total_seconds() - time.monotonic()
        return left if count >= MAX_FAILURES and left > 0 else 0.0


def _count_failure(address: str) -> None:
    """Count one wrong sign-in; the window starts at the first."""
    redis = current_app.redis  # type: ignore[attr-defined]
    if redis is not None:
        try:
            key = _failure_key(address)
            with redis.pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, int(FAILURE_WINDOW.total_seconds()), nx=True)
                pipe.execute()
            return
        except RedisError:
            pass
    with _local_lock:
        count, since = _local_failures.get(address, (0, 0.0))
        if time.monotonic() - since > FAILURE_WINDOW.total_seconds():
            count, since = 0, time.monotonic()
        _local_failures[address] = (count + 1, since)


def _minutes(seconds: float) -> str:
    """A wait in words."""
    minutes = max(1, round(seconds / 60))
    return "a minute" if minutes == 1 else f"{minutes} minutes"


def require_post_csrf() -> None:
    """Abort with 400 unless the request carries this session's CSRF token (for non-console forms)."""
    if not csrf_ok():
        abort(400, "This form's security token is missing or out of date. Reload the page and try again.")
