"""The model edge: openai errors sorted into retry / give up, and the offline responder."""

from __future__ import annotations

import httpx2
import openai
import pytest

from gateway.agent.llm import OFFLINE_LABEL, classify_openai_error, complete, model_client
from gateway.config import Settings
from gateway.errors import PermanentError, TransientError
from tests.conftest import free_port

REQUEST = httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions")


def status_error(status: int, message: str = "nope") -> openai.APIStatusError:
    """The exception the openai client raises for an HTTP error answer."""
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    response = httpx2.Response(status, request=REQUEST, json=body)
    classes = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        403: openai.PermissionDeniedError,
        404: openai.NotFoundError,
        409: openai.ConflictError,
        422: openai.UnprocessableEntityError,
        429: openai.RateLimitError,
    }
    cls = classes.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(message, response=response, body=body)


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (openai.APITimeoutError(request=REQUEST), TransientError, "timeout"),
        (openai.APIConnectionError(request=REQUEST), TransientError, "connection_error"),
        (status_error(429), TransientError, "429"),
        (status_error(500), TransientError, "500"),
        (status_error(502), TransientError, "502"),
        (status_error(503), TransientError, "503"),
        (status_error(408), TransientError, "408"),
        (status_error(409), TransientError, "409"),
        (status_error(400), PermanentError, "400"),
        (status_error(401), PermanentError, "401"),
        (status_error(403), PermanentError, "403"),
        (status_error(404), PermanentError, "404"),
        (status_error(422), PermanentError, "422"),
    ],
)
def test_openai_errors_are_sorted(exc, kind, code):
    error = classify_openai_error(exc)
    assert type(error) is kind
    assert error.code == code
    assert error.reason  # a sentence a person can read


def test_reason_carries_the_providers_message():
    error = classify_openai_error(status_error(404, "The model `gpt-9` does not exist"))
    assert "gpt-9" in error.reason


def test_offline_responder_without_model():
    settings = Settings()  # no OPENAI_API_KEY, no OPENAI_BASE_URL
    assert not settings.model_configured
    result = complete(
        settings,
        model="whatever",
        messages=[
            {"role": "system", "content": "S"},
            {"role": "user", "content": "hello there"},
        ],
    )
    assert result.text.startswith(OFFLINE_LABEL)
    assert "hello there" in result.text


def test_unreachable_model_is_transient():
    settings = Settings(openai_base_url=f"http://127.0.0.1:{free_port()}/v1", model_timeout=5)
    with pytest.raises(TransientError) as info:
        complete(settings, model="m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "connection_error"


def test_client_is_built_once_per_settings():
    a = Settings(openai_base_url="http://127.0.0.1:9/v1", openai_api_key="k1")
    b = Settings(openai_base_url="http://127.0.0.1:9/v1", openai_api_key="k2")
    assert model_client(a) is model_client(a)
    assert model_client(a) is not model_client(b)
    assert model_client(a).max_retries == 0


def test_errors_survive_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(PermanentError("bad number", 21211)))
    assert (type(error), error.code, error.reason) == (PermanentError, "21211", "bad number")
