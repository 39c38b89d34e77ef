"""Logs a person can read: one format for every process, phone numbers masked, secrets never shown.

`configure_logging(settings)` installs one handler on the root logger, in text or (LOG_FORMAT=json)
one JSON object per line. Every line passes through `redact`: a phone number (E.164, also
URL-encoded) shows only its last 4 digits, and the secrets of the settings (Twilio's auth token,
the model and gateway API keys, passwords in URLs) are replaced by `***`, whichever library wrote
the line. The twilio client's request dumps and the HTTP libraries' per-request lines are
silenced to WARNING. Code that logs a text in or out passes `extra=traffic(...)`, so the JSON
line carries the same fields (chat_id, direction, status, number) as the text line shows.

The lowest layer beside config and errors: it imports nothing of the gateway but config.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a line may carry besides its message; only these reach JSON (RQ's own extras hold job
# arguments, which are not for logs).
FIELDS = ("chat_id", "message_id", "direction", "status", "number", "part", "endpoint", "code", "job_id")
# Loggers whose INFO lines are per-request dumps (headers, bodies, retries): WARNING and up only.
QUIET_LOGGERS = ("twilio.http_client", "httpx", "httpx2", "httpcore", "openai", "urllib3")

# An E.164 number (+ and 8 to 15 digits), also when URL-encoded (%2B...).
_PHONE = re.compile(r"(\+|%2B)(\d{4,11})(\d{4})(?!\d)", re.IGNORECASE)


def mask_number(number: str | None) -> str:
    """A phone number shown by its last 4 digits: `+14155550123` -> `***0123`."""
    digits = re.sub(r"\D", "", number or "")
    return f"***{digits[-4:]}" if digits else "-"


def safe_url(url: str | None) -> str:
    """A URL without its password (and without a query string, which may hold one)."""
    if not url:
        return "(not set)"
    if url.startswith("sqlite:"):
        return url  # a file path: nothing secret, and urlunsplit would drop a slash of it
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unreadable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _url_password(url: str | None) -> str | None:
    """The password part of a URL, if it has one."""
    try:
        return urlsplit(url).password if url else None
    except ValueError:
        return None


def secrets_of(settings: Settings | None) -> list[str]:
    """The secret values of the settings worth hiding (long enough not to match by accident)."""
    if settings is None:
        return []
    values = [
        settings.twilio_auth_token,
        settings.openai_api_key,
        settings.gateway_api_key,
        _url_password(settings.database_url),
        _url_password(settings.redis_url),
    ]
    return sorted({v for v in values if v and len(v) >= 6}, key=len, reverse=True)


class Redactor:
    """Masks phone numbers and hides known secrets in a piece of text."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        """Hide these secret values (besides masking every phone number)."""
        self.secrets = list(secrets or [])

    def __call__(self, text: str) -> str:
        """`text` with secrets as `***` and phone numbers as `***` + their last 4 digits."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return _PHONE.sub(lambda m: "***" + m.group(3), text)


def traffic(chat_id: str | None, direction: str, status: str | None, number: str | None, **more: Any) -> dict:
    """The `extra` of a line about a text in or out: its fields, with the number masked."""
    return {
        "chat_id": chat_id,
        "direction": direction,
        "status": status,
        "number": mask_number(number),
        **more,
    }


class TextFormatter(logging.Formatter):
    """The classic one-line format, redacted (tracebacks included)."""

    def __init__(self, redactor: Redactor) -> None:
        """Format as TEXT_FORMAT and pass the result through `redactor`."""
        super().__init__(TEXT_FORMAT)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        """The redacted line."""
        return self.redactor(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the known fields, and any traceback."""

    def __init__(self, redactor: Redactor) -> None:
        """Pass every string through `redactor`."""
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        """The redacted JSON line."""
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redactor(record.getMessage()),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = self.redactor(value) if isinstance(value, str) else value
        if record.exc_info:
            data["traceback"] = self.redactor(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False, default=str)


class ExpectedFailures(logging.Filter):
    """RQ's traceback of a job that failed in an expected way becomes at most one line.

    A GatewayError is an expected failure of a service (the model, Twilio) with a reason a person
    can read: the job logged one line already, so RQ's is dropped. A database that went away (a
    PostgreSQL restart, a terminated backend) fails whatever job was using it; RQ retries the job,
    and its traceback becomes one line naming the job and the database's error. A traceback stays
    for everything else (a bug).
    """

    EXPECTED = ("gateway.errors.TransientError", "gateway.errors.PermanentError")
    DATABASE_DOWN = (
        "peewee.OperationalError",
        "peewee.InterfaceError",
        "psycopg2.OperationalError",
        "psycopg2.InterfaceError",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        """False for RQ's "exception raised while executing" line of an expected failure; one line
        for a database failure."""
        if not record.name.startswith("rq.") or "exception raised while executing" not in str(record.msg):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        # The exception's own line: the last one not indented (a message may go on, indented).
        lines = [line for line in str(args[-1] if args else "").splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if not line[0].isspace()), "")
        if last.startswith(self.EXPECTED):
            return False
        if last.startswith(self.DATABASE_DOWN) and len(args) == 4:
            record.msg = (
                "Worker %s: job %s (%s) failed on the database: %s; RQ retries it while it has retries"
            )
            record.args = (*args[:3], last[:300])
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is written (a test runner may swap it)."""

    def __init__(self) -> None:
        """No stream of its own."""
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        """The current sys.stderr."""
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        """Ignored: the stream is always the current sys.stderr."""


def make_handler(settings: Settings | None, log_format: str = "text", stream=None) -> logging.Handler:
    """A stream handler in `log_format` ("text" or "json") that redacts what it writes (to
    `stream`, else to the current sys.stderr)."""
    redactor = Redactor(secrets_of(settings))
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter(redactor) if log_format == "json" else TextFormatter(redactor))
    handler.addFilter(ExpectedFailures())
    handler._smsgw = True  # type: ignore[attr-defined]  # ours: replaced, not stacked, on reconfigure
    return handler


def configure_logging(
    settings: Settings | None, level: str | int = "INFO", log_format: str | None = None
) -> None:
    """Route every logger through one redacting handler on the root logger, at `level`."""
    fmt = (log_format or getattr(settings, "log_format", None) or "text").lower()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_smsgw", False)]:
        root.removeHandler(handler)
    root.addHandler(make_handler(settings, fmt))
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def is_configured() -> bool:
    """True when the root logger already has a handler (ours, a test runner's, or gunicorn's)."""
    return bool(logging.getLogger().handlers)


def describe_setup(settings: Settings, process: str) -> str:
    """The startup line: which database, Redis, model endpoint and model, and Twilio origin (no secrets)."""
    if settings.model_configured:
        endpoint = safe_url(settings.openai_base_url or "https://api.openai.com/v1")
        model = f"{endpoint} model {settings.openai_model}"
    else:
        model = "none (the offline responder answers)"
    twilio = safe_url(settings.twilio_api_base_url)
    if not settings.twilio_configured:
        twilio += " (no credentials: replies are not sent by Twilio)"
    return (
        f"smsgw {process}: database {safe_url(settings.resolved_database_url())}; "
        f"redis {safe_url(settings.redis_url)}; model endpoint {model}; twilio {twilio}"
    )
