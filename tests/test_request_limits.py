"""Request-size caps: oversized, chunked and many-field bodies get a 413 before anything parses them."""

from __future__ import annotations

import io
from urllib.parse import urlencode

import pytest

from gateway.limits import API_LIMIT, WEBHOOK_LIMIT
from gateway.storage.models import Message
from gateway.twilio import signature
from tests.conftest import PUBLIC_BASE_URL, post_twilio, sign
from tests.payloads import inbound_sms

SMS = "/twilio/sms"


class EndlessBody(io.RawIOBase):
    """A request body of `size` bytes made up on demand, counting how many were read."""

    def __init__(self, size: int, fill: bytes = b"a") -> None:
        """`size` bytes of `fill`."""
        self.size = size
        self.fill = fill
        self.read_bytes = 0

    def readable(self) -> bool:
        """It is a readable stream."""
        return True

    def read(self, n: int = -1) -> bytes:
        """The next `n` bytes (all that is left for -1)."""
        left = self.size - self.read_bytes
        n = left if n is None or n < 0 else min(n, left)
        self.read_bytes += n
        return self.fill * n


@pytest.fixture
def parse_spy(monkeypatch):
    """Counts signature checks: a webhook that reaches one has had its form parsed."""
    calls = []
    real = signature.signature_problem

    def spy(req, settings):
        calls.append(req.path)
        return real(req, settings)

    monkeypatch.setattr(signature, "signature_problem", spy)
    return calls


def raw_post(app, path: str, body: EndlessBody, *, chunked: bool, content_type: str, headers=None):
    """POST `body` through the whole WSGI app, with a declared length or chunked (no length)."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "CONTENT_TYPE": content_type,
        "wsgi.input": body,
    }
    if chunked:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(body.size)
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    with app.test_client() as client:
        return client.open(environ_overrides=environ, method="POST", path=path)


FORM = "application/x-www-form-urlencoded"


def test_oversized_webhook_is_refused_unread(app, parse_spy):
    """An unsigned 100 MB webhook is answered 413 without one byte of its body being read."""
    body = EndlessBody(100 * 1024 * 1024)
    response = raw_post(app, SMS, body, chunked=False, content_type=FORM, headers={"X-Twilio-Signature": "x"})
    assert response.status_code == 413
    assert "at most 65536" in response.get_data(as_text=True)
    assert body.read_bytes == 0
    assert parse_spy == []


def test_chunked_webhook_is_read_only_to_the_cap(app, parse_spy):
    """A chunked body is read through a bounded reader: past the cap it is 413, the rest unread."""
    body = EndlessBody(20 * 1024 * 1024)
    response = raw_post(app, SMS, body, chunked=True, content_type=FORM, headers={"X-Twilio-Signature": "x"})
    assert response.status_code == 413
    assert body.read_bytes <= WEBHOOK_LIMIT.max_bytes + 1
    assert parse_spy == []


def test_too_many_fields_is_refused_before_parsing(client, parse_spy):
    """A small form of thousands of fields is 413 before any field is decoded or the signature checked."""
    form = {f"f{i}": "1" for i in range(WEBHOOK_LIMIT.max_fields + 1)}
    response = post_twilio(client, SMS, form)
    assert response.status_code == 413
    assert "fields" in response.get_data(as_text=True)
    assert parse_spy == []
    assert Message.select().count() == 0


def test_a_real_webhook_sent_chunked_is_recorded(app):
    """A signed webhook of ordinary size is accepted whether its length is declared or chunked."""
    form = inbound_sms("Hi, chunked")
    raw = urlencode(form).encode()
    body = EndlessBody(len(raw))
    body.read = io.BytesIO(raw).read  # type: ignore[method-assign]
    headers = {"X-Twilio-Signature": sign(PUBLIC_BASE_URL + SMS, form)}
    response = raw_post(app, SMS, body, chunked=True, content_type=FORM, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert Message.get(Message.twilio_sid == form["MessageSid"]).content == "Hi, chunked"


@pytest.mark.parametrize("chunked", [False, True])
def test_api_body_over_a_megabyte_is_a_json_413(app, settings, chunked):
    """/v1 refuses a body over 1 MiB, declared or chunked, with its JSON error, reading at most the cap."""
    body = EndlessBody(5 * 1024 * 1024)
    response = raw_post(
        app,
        "/v1/agents",
        body,
        chunked=chunked,
        content_type="application/json",
        headers={"Authorization": f"Bearer {settings.gateway_api_key}"},
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert body.read_bytes <= (API_LIMIT.max_bytes + 1 if chunked else 0)


def test_bad_content_length_is_a_400(app):
    """A Content-Length that is not a number is refused with a reason."""
    with app.test_client() as client:
        response = client.post(SMS, environ_overrides={"CONTENT_LENGTH": "12abc"}, data=b"")
    assert response.status_code == 400
    assert "Content-Length" in response.get_data(as_text=True)
