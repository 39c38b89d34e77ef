"""X-Twilio-Signature: proof that a webhook request comes from Twilio, checked before anything else.

Twilio signs the URL it requested plus the POSTed form with the account's auth token. Behind a
TLS proxy or a tunnel the app sees another URL than Twilio did (http inside, https outside, another
host), so the URL is rebuilt from `PUBLIC_BASE_URL` (the origin Twilio reaches) + the app's path
(+ the query string, if any). Without `PUBLIC_BASE_URL` the request's own URL is used as the app
sees it: X-Forwarded-* headers are NOT trusted, so behind a proxy set `PUBLIC_BASE_URL`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from flask import Request, Response, current_app, request
from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

from gateway.config import Settings

log = logging.getLogger(__name__)


def signed_url(req: Request, public_base_url: str | None) -> str:
    """The URL Twilio requested (and signed) for this request."""
    if not public_base_url:
        return req.url
    url = public_base_url.rstrip("/") + req.script_root + req.path
    if req.query_string:
        url += "?" + req.query_string.decode("latin-1")
    return url


def signature_problem(req: Request, settings: Settings) -> str | None:
    """Why this request's signature is not Twilio's, or None when it is."""
    signature = req.headers.get(SIGNATURE_HEADER)
    if not signature:
        return "no X-Twilio-Signature header"
    if not settings.twilio_auth_token:
        return "TWILIO_AUTH_TOKEN is unset, so no signature can be checked"
    url = signed_url(req, settings.public_base_url)
    algorithm = get_signature_algorithm(req.headers.get(SIGNATURE_SETTINGS_HEADER))
    validator = RequestValidator(settings.twilio_auth_token)
    if not validator.validate(url, req.form, signature, algorithm=algorithm):
        return f"X-Twilio-Signature does not match a request to {url}"
    return None


def forbidden() -> Response:
    """The 403 a request that fails the check gets (the reason is logged, not sent)."""
    return Response("Forbidden: invalid or missing X-Twilio-Signature\n", status=403, mimetype="text/plain")


def twilio_signature_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Answer 403 unless the request carries Twilio's valid signature (unless checks are off)."""

    @functools.wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Any:
        settings: Settings = current_app.config["SETTINGS"]
        if settings.twilio_validate_signatures:
            problem = signature_problem(request, settings)
            if problem is not None:
                log.warning(
                    "rejected %s %s from %s: %s%s",
                    request.method,
                    request.path,
                    request.remote_addr,
                    problem,
                    "" if settings.public_base_url else " (behind a proxy? set PUBLIC_BASE_URL)",
                )
                return forbidden()
        return view(*args, **kwargs)

    return checked
