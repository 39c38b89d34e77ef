"""Liveness and readiness probes.

`/readyz` tells an anonymous caller only whether the gateway is ready: the reason it is not
(a database or Redis error, which can name hosts and users) goes to the log, and to callers that
present the API key (`Authorization: Bearer <GATEWAY_API_KEY>`).
"""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, current_app, jsonify, request

from gateway.storage.db import database

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """The database and Redis answer: 200 ok, else 503 unavailable (details logged)."""
    checks: dict[str, str] = {}
    try:
        database.execute_sql("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # report, don't raise: this is a probe
        checks["database"] = f"error: {exc}"
    redis = current_app.redis  # type: ignore[attr-defined]
    if redis is None:
        checks["redis"] = "error: REDIS_URL is not set"
    else:
        try:
            redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {exc}"
    ok = all(v == "ok" for v in checks.values())
    if not ok:
        log.warning("readyz: not ready: %s", "; ".join(f"{k} {v}" for k, v in checks.items()))
    body: dict = {"status": "ok" if ok else "unavailable"}
    if _has_api_key():
        body["checks"] = checks
    return jsonify(body), (200 if ok else 503)


def _has_api_key() -> bool:
    """True when the request carries the gateway's API key as a bearer token."""
    expected = current_app.config["SETTINGS"].gateway_api_key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not token.strip():
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())
