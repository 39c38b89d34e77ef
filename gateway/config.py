"""The one place that reads the environment (and `.env`) into the gateway's settings.

Each setting is one typed field of `Settings`, named by the environment variable it is read from
(`validation_alias`); pydantic parses and checks the values, and `load_settings` turns a rejected
value into a message that names the variable and what it expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_MODEL = "gpt-4o-mini"


class SettingsError(ValueError):
    """A setting in the environment or `.env` has a value the gateway cannot use."""


class Settings(BaseSettings):
    """Every setting the gateway reads; `.env.example` lists the same names.

    `Settings(field=...)` takes exactly the values given (tests, `smsgw dev`); the environment is
    read only by `load_settings`. Immutable: derive changed settings with `model_copy(update=...)`.
    """

    model_config = SettingsConfigDict(
        frozen=True, validate_by_name=True, validate_by_alias=True, extra="ignore", hide_input_in_errors=False
    )

    # Database, in peewee db_url form; unset: a SQLite file in the instance folder.
    database_url: str | None = Field(None, validation_alias="DATABASE_URL")
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    twilio_account_sid: str | None = Field(None, validation_alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: str | None = Field(None, repr=False, validation_alias="TWILIO_AUTH_TOKEN")
    twilio_api_base_url: str = Field("https://api.twilio.com", validation_alias="TWILIO_API_BASE_URL")
    # Send every number's messages through this Messaging Service (MessagingServiceSid instead of From),
    # unless the number has its own; None: send From the number.
    twilio_messaging_service_sid: str | None = Field(None, validation_alias="TWILIO_MESSAGING_SERVICE_SID")
    public_base_url: str | None = Field(None, validation_alias="PUBLIC_BASE_URL")
    openai_api_key: str | None = Field(None, repr=False, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(None, validation_alias="OPENAI_BASE_URL")
    openai_model: str = Field(DEFAULT_MODEL, validation_alias="OPENAI_MODEL")
    gateway_api_key: str | None = Field(None, repr=False, validation_alias="GATEWAY_API_KEY")
    # Signs the console's session cookie; unset: derived from GATEWAY_API_KEY (changing the key
    # then signs everyone out).
    secret_key: str | None = Field(None, repr=False, validation_alias="SECRET_KEY")
    # Development switch: skip X-Twilio-Signature checks (logged loudly at start).
    twilio_validate_signatures: bool = Field(True, validation_alias="TWILIO_VALIDATE_SIGNATURES")
    # Where SQLite files live when DATABASE_URL is unset.
    instance_path: str = Field("instance", validation_alias="SMSGW_INSTANCE_PATH")
    # Seconds a model call may take before it counts as a transient timeout.
    model_timeout: float = Field(60.0, gt=0, validation_alias="MODEL_TIMEOUT")
    # How many jobs one worker process runs at once (threads, not forks).
    worker_concurrency: int = Field(200, ge=1, validation_alias="WORKER_CONCURRENCY")
    # PostgreSQL connections one process may hold (pooled; jobs wait for a free one).
    database_pool_size: int = Field(20, ge=1, validation_alias="DATABASE_POOL_SIZE")
    # Queue name prefix, so several gateways (or test runs) can share one Redis.
    queue_prefix: str = Field("smsgw", validation_alias="SMSGW_QUEUE_PREFIX")
    # Spend guard (gateway/agent/spend.py): the defaults for agents without caps of their own, on
    # agent replies per person per hour and per day, and on model tokens per day per agent; and the
    # whole gateway's daily token budget. 0: no cap.
    spend_replies_per_person_per_hour: int = Field(
        30, ge=0, validation_alias="SPEND_REPLIES_PER_PERSON_PER_HOUR"
    )
    spend_replies_per_person_per_day: int = Field(
        200, ge=0, validation_alias="SPEND_REPLIES_PER_PERSON_PER_DAY"
    )
    spend_agent_tokens_per_day: int = Field(2_000_000, ge=0, validation_alias="SPEND_AGENT_TOKENS_PER_DAY")
    spend_gateway_tokens_per_day: int = Field(
        10_000_000, ge=0, validation_alias="SPEND_GATEWAY_TOKENS_PER_DAY"
    )
    # Chat event webhooks for agents without their own `webhook_url`, and the secret that signs them
    # (required with the URL: every delivery is signed; it also signs agents' calls without their own).
    events_webhook_url: str | None = Field(None, validation_alias="EVENTS_WEBHOOK_URL")
    events_webhook_secret: str | None = Field(None, repr=False, validation_alias="EVENTS_WEBHOOK_SECRET")
    # Let event webhooks and tools reach private, loopback and link-local addresses (trusted networks
    # and tests only: otherwise an agent's URL could probe the gateway's own network).
    allow_private_urls: bool = Field(False, validation_alias="ALLOW_PRIVATE_URLS")
    # Bearer token for GET /metrics (Prometheus); unset: /metrics is refused.
    metrics_token: str | None = Field(None, repr=False, validation_alias="METRICS_TOKEN")
    # Where every process (gunicorn's workers, the RQ worker) keeps its metric files; /metrics sums
    # them. Unset: <temp dir>/smsgw-metrics-<SMSGW_QUEUE_PREFIX>, shared by the processes of one host.
    prometheus_multiproc_dir: str | None = Field(None, validation_alias="PROMETHEUS_MULTIPROC_DIR")
    # Log lines as text, or "json" (one JSON object per line with the same fields).
    log_format: Literal["text", "json"] = Field("text", validation_alias="LOG_FORMAT")
    # Messages older than this many days are deleted by a periodic job (None: kept forever).
    retention_days: int | None = Field(None, ge=1, validation_alias="RETENTION_DAYS")
    # Seconds between sweeps for unanswered texts and lost jobs (recorded while Redis was down,
    # or whose job vanished), and how old a pending text must be before the sweep queues it.
    sweep_interval: float = Field(10.0, gt=0, validation_alias="SWEEP_INTERVAL")
    sweep_min_age: float = Field(10.0, ge=0, validation_alias="SWEEP_MIN_AGE")
    # How many reverse proxies in front of the web app append to X-Forwarded-For (nginx, a load
    # balancer): with N, the client address is the Nth value from the right (Werkzeug's ProxyFix), so
    # the console's sign-in pause counts each client, not the proxy. 0: the header is ignored.
    trusted_proxy_hops: int = Field(0, ge=0, le=10, validation_alias="TRUSTED_PROXY_HOPS")
    # Seconds between worker heartbeats; a worker silent for three of them counts as dead and
    # its jobs are run again by another worker.
    worker_heartbeat_interval: float = Field(5.0, gt=0, validation_alias="WORKER_HEARTBEAT_INTERVAL")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values passed in: `load_settings` decides which environment is read."""
        return (init_settings,)

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        """Surrounding spaces in `.env` files mean nothing."""
        return value.strip() if isinstance(value, str) else value

    @field_validator("database_url", "redis_url", "twilio_api_base_url", "public_base_url", "openai_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        """URLs are joined with paths that start with `/`."""
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _events_are_signed(self) -> Settings:
        """Every event delivery is signed: a gateway-wide endpoint needs the secret that signs it."""
        if self.events_webhook_url and not self.events_webhook_secret:
            raise PydanticCustomError(
                "secret_required",
                "EVENTS_WEBHOOK_URL is set but EVENTS_WEBHOOK_SECRET is not: every delivery is signed; "
                "set EVENTS_WEBHOOK_SECRET too",
            )
        return self

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


# Field name -> the environment variable it is read from, e.g. "instance_path" -> "SMSGW_INSTANCE_PATH".
ENV_NAMES: dict[str, str] = {
    name: str(info.validation_alias or name.upper()) for name, info in Settings.model_fields.items()
}

# What a rejected value should have been, by pydantic error type.
_EXPECTED = {
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "bool_parsing": "1 or 0 (or true/false, yes/no, on/off)",
}


def _describe(error: Mapping) -> str:
    """One line per rejected value: `WORKER_CONCURRENCY: expected an integer, got 'abc'`."""
    if not error.get("loc"):  # a rule between settings: its message names them
        return error["msg"]
    field = str(error["loc"][0])
    name = ENV_NAMES.get(field, field)
    expected = _EXPECTED.get(error["type"]) or error["msg"].removeprefix("Input should be ")
    return f"{name}: expected {expected}, got {error.get('input')!r}"


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The environment variables that `load_settings` turns back into these settings."""
    env: dict[str, str] = {}
    for attr, name in ENV_NAMES.items():
        value = getattr(settings, attr)
        if value is None:
            continue
        env[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


def load_settings(env: Mapping[str, str] | None = None, dotenv_path: str | None = ".env") -> Settings:
    """Build settings from `.env` (if present) overlaid by the process environment (or `env`).

    An empty value means "use the default". Raises SettingsError naming each bad variable.
    """
    merged: dict[str, str] = {}
    if dotenv_path and Path(dotenv_path).is_file():
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(os.environ if env is None else env)
    values = {name: merged[name] for name in ENV_NAMES.values() if merged.get(name, "").strip()}
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(error) for error in exc.errors())) from None
