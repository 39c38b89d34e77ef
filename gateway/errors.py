"""Errors sorted once, at the edge that talks to a service: retry later, or give up."""

from __future__ import annotations

# Twilio error codes that a later attempt may get past (rate limits, queue overflow, a
# destination that is momentarily unreachable).
TWILIO_TRANSIENT_CODES = frozenset({20429, 30001, 21611})
# Twilio's "the person replied STOP to this number": also marks the contact opted out.
TWILIO_OPTED_OUT = 21610
# Twilio error codes that will fail the same way every time.
TWILIO_PERMANENT_CODES = frozenset({TWILIO_OPTED_OUT, 21211, 21614, 21617, 21608})


class GatewayError(Exception):
    """A failure talking to a service, with a machine code and a sentence a person can read."""

    def __init__(self, reason: str, code: str | int | None = None, endpoint: str | None = None) -> None:
        """Keep the code (Twilio's error code, an HTTP status, or a short name), the reason, and
        the endpoint that failed (a URL without secrets, for the log line)."""
        super().__init__(reason)
        self.reason = reason
        self.code = None if code is None else str(code)
        self.endpoint = endpoint

    def __str__(self) -> str:
        """`[code] reason`."""
        return f"[{self.code}] {self.reason}" if self.code else self.reason

    def __reduce__(self):
        """Pickle with both fields (RQ stores failures across processes)."""
        return (type(self), (self.reason, self.code, self.endpoint))


class TransientError(GatewayError):
    """Worth retrying: timeouts, connection errors, rate limits, server errors."""


class PermanentError(GatewayError):
    """Retrying cannot help: bad numbers, opted-out people, bad credentials, unknown models."""


def http_status_is_transient(status: int | None) -> bool:
    """True for HTTP statuses a retry may get past: none at all, 408, 409, 429 and 5xx."""
    return status is None or status in (408, 409, 429) or status >= 500


def classify_twilio(status: int | None, code: int | None, reason: str) -> GatewayError:
    """Sort a Twilio REST failure by its error code first, then by its HTTP status."""
    if code is not None:
        if code in TWILIO_TRANSIENT_CODES:
            return TransientError(reason, code)
        if code in TWILIO_PERMANENT_CODES:
            return PermanentError(reason, code)
    label = code if code is not None else status
    if http_status_is_transient(status):
        return TransientError(reason, label)
    return PermanentError(reason, label)


def code_and_reason(error: BaseException) -> tuple[str, str]:
    """The (error_code, error_message) stored on a message for an error (the code cut to its column)."""
    code = getattr(error, "code", None) or type(error).__name__
    reason = getattr(error, "reason", None) or str(error)
    return str(code)[:16], reason


def is_opted_out(error: BaseException) -> bool:
    """True when Twilio refused because the person opted out of this number (21610)."""
    return isinstance(error, PermanentError) and error.code == str(TWILIO_OPTED_OUT)
