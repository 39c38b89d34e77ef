"""The one place that reads the environment (and `.env`) into the gateway's settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from dotenv import dotenv_values

DEFAULT_MODEL = "gpt-4o-mini"


def _bool(value: str | None, default: bool = False) -> bool:
    """Read a yes/no setting the way people write them in `.env` files."""
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Every setting the gateway reads; `.env.example` lists the same names."""

    database_url: str | None = None
    redis_url: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_api_base_url: str = "https://api.twilio.com"
    public_base_url: str | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = DEFAULT_MODEL
    gateway_api_key: str | None = None
    # Development switch: skip X-Twilio-Signature checks (logged loudly at start).
    twilio_validate_signatures: bool = True
    # Where SQLite files live when DATABASE_URL is unset.
    instance_path: str = "instance"
    # Seconds a model call may take before it counts as a transient timeout.
    model_timeout: float = 60.0
    # How many jobs one worker process runs at once (threads, not forks).
    worker_concurrency: int = 200
    # PostgreSQL connections one process may hold (pooled; jobs wait for a free one).
    database_pool_size: int = 20
    # Queue name prefix, so several gateways (or test runs) can share one Redis.
    queue_prefix: str = "smsgw"
    # `smsgw dev` without Twilio credentials: replies are logged by the worker instead of sent.
    dev_outbox: bool = False
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def model_configured(self) -> bool:
        """True when a real model endpoint is configured (else the offline responder answers)."""
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def twilio_configured(self) -> bool:
        """True when REST credentials are present."""
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the instance folder."""
        if self.database_url:
            return self.database_url
        path = Path(self.instance_path).resolve() / "smsgw.sqlite3"
        return f"sqlite:///{path}"


_ENV_NAMES = {
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "twilio_account_sid": "TWILIO_ACCOUNT_SID",
    "twilio_auth_token": "TWILIO_AUTH_TOKEN",
    "twilio_api_base_url": "TWILIO_API_BASE_URL",
    "public_base_url": "PUBLIC_BASE_URL",
    "openai_api_key": "OPENAI_API_KEY",
    "openai_base_url": "OPENAI_BASE_URL",
    "openai_model": "OPENAI_MODEL",
    "gateway_api_key": "GATEWAY_API_KEY",
    "twilio_validate_signatures": "TWILIO_VALIDATE_SIGNATURES",
    "instance_path": "SMSGW_INSTANCE_PATH",
    "model_timeout": "MODEL_TIMEOUT",
    "worker_concurrency": "WORKER_CONCURRENCY",
    "database_pool_size": "DATABASE_POOL_SIZE",
    "queue_prefix": "SMSGW_QUEUE_PREFIX",
    "dev_outbox": "SMSGW_DEV_OUTBOX",
}


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The environment variables that `load_settings` turns back into these settings."""
    env: dict[str, str] = {}
    for attr, name in _ENV_NAMES.items():
        value = getattr(settings, attr)
        if value is None:
            continue
        env[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


def load_settings(env: dict[str, str] | None = None, dotenv_path: str | None = ".env") -> Settings:
    """Build settings from `.env` (if present) overlaid by the process environment."""
    merged: dict[str, str] = {}
    if dotenv_path and Path(dotenv_path).is_file():
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(os.environ if env is None else env)
    kwargs: dict[str, object] = {}
    types = {f.name: f.type for f in fields(Settings)}
    for attr, name in _ENV_NAMES.items():
        raw = merged.get(name)
        if raw is None or raw.strip() == "":
            continue
        raw = raw.strip()
        kind = types[attr]
        if kind == "bool":
            kwargs[attr] = _bool(raw)
        elif kind == "int":
            kwargs[attr] = int(raw)
        elif kind == "float":
            kwargs[attr] = float(raw)
        else:
            kwargs[attr] = raw.rstrip("/") if attr.endswith("_url") else raw
    return Settings(**kwargs)  # type: ignore[arg-type]
