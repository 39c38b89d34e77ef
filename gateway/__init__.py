"""The SMS/MMS gateway for LLM chat agents: the Flask application factory."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway import metrics
from gateway.config import Settings, load_settings
from gateway.limits import RequestLimits
from gateway.logs import configure_logging, describe_setup, is_configured
from gateway.queue import connect_redis, job_queue, queue_name
from gateway.storage import db

log = logging.getLogger(__name__)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the gateway's Flask app; nothing happens at import time."""
    app = Flask(__name__, instance_relative_config=True)
    settings: Settings = (test_config or {}).get("SETTINGS") or load_settings()
    if settings.instance_path == "instance":
        settings = _with_instance_path(settings, app.instance_path)
    app.config.from_mapping(SETTINGS=settings)
    if test_config:
        app.config.update({k: v for k, v in test_config.items() if k != "SETTINGS"})

    metrics.init(settings)  # before anything is counted in this process
    if not is_configured():  # under gunicorn: nobody set up logging yet
        configure_logging(settings)
    try:
        db.open_from_settings(settings)
    except db.DatabaseUnavailable as exc:
        if test_config is not None:
            raise
        log.critical("%s", exc)
        # 3 is gunicorn's "worker failed to boot": it stops, instead of restarting the worker forever.
        raise SystemExit(3) from None
    log.info(describe_setup(settings, "web"))
    db.init_app(app)

    app.redis = connect_redis(settings.redis_url, for_web=True) if settings.redis_url else None  # type: ignore[attr-defined]
    app.task_queue = (  # type: ignore[attr-defined]
        job_queue(queue_name(settings), app.redis) if app.redis is not None else None  # type: ignore[attr-defined]
    )

    if not settings.twilio_validate_signatures:
        log.warning("TWILIO_VALIDATE_SIGNATURES is off: webhook signatures are NOT checked (dev only)")
    if not settings.public_base_url:
        log.warning("PUBLIC_BASE_URL is unset: signatures are checked against the request's own URL")

    from gateway import health, monitoring

    app.register_blueprint(health.bp)
    app.register_blueprint(monitoring.bp)
    _register_blueprints(app)
    if settings.trusted_proxy_hops:
        # The client's address from X-Forwarded-For, as many hops deep as there are proxies we
        # trust; the other X-Forwarded-* headers stay ignored (URLs come from PUBLIC_BASE_URL).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_hops, x_proto=0, x_host=0)  # type: ignore[method-assign]
    # Size caps run before Flask reads a byte of the body (see gateway/limits.py).
    app.wsgi_app = RequestLimits(app.wsgi_app)  # type: ignore[method-assign]
    return app


def _with_instance_path(settings: Settings, instance_path: str) -> Settings:
    """Settings whose SQLite default lives in Flask's instance folder."""
    return settings.model_copy(update={"instance_path": instance_path})


def _register_blueprints(app: Flask) -> None:
    """Register the blueprints of each area of the gateway."""
    from gateway import api, console
    from gateway.twilio import webhooks as twilio_webhooks

    app.register_blueprint(twilio_webhooks.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(console.bp)
    if app.config.get("TWILIO_EMULATOR") is not None:
        from gateway.dev_phone import views as dev_phone

        app.register_blueprint(dev_phone.bp)
    app.add_url_rule("/", "index", _index)


def _index():
    """The gateway's front page: where the console is."""
    from flask import render_template

    return render_template("console/index.html")
