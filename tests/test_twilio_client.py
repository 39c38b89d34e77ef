"""The Twilio edge: REST errors sorted by Twilio's error code and HTTP status."""

from __future__ import annotations

import pytest
from twilio.base.exceptions import TwilioRestException

from gateway.config import Settings
from gateway.errors import PermanentError, TransientError, is_opted_out
from gateway.twilio.client import classify_twilio_error, send_sms, twilio_client
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, free_port

URI = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (429, 20429, TransientError),  # too many requests
        (400, 30001, TransientError),  # queue overflow
        (400, 21611, TransientError),  # this From number has too many messages queued
        (400, 21610, PermanentError),  # the person replied STOP
        (400, 21211, PermanentError),  # invalid To number
        (400, 21614, PermanentError),  # not a mobile number
        (400, 21617, PermanentError),  # body too long
        (400, 21608, PermanentError),  # trial account: unverified number
        (400, 21606, PermanentError),  # other 4xx
        (401, 20003, PermanentError),  # bad credentials
        (404, 20404, PermanentError),
        (500, None, TransientError),
        (503, 20500, TransientError),
        (429, None, TransientError),
    ],
)
def test_twilio_errors_are_sorted(status, code, kind):
    error = classify_twilio_error(
        TwilioRestException(status, URI, msg="Twilio says no", code=code, method="POST")
    )
    assert type(error) is kind
    assert error.code == str(code if code is not None else status)
    assert error.reason == "Twilio says no"


def test_opted_out_is_recognised():
    error = classify_twilio_error(TwilioRestException(400, URI, msg="unsubscribed", code=21610))
    assert is_opted_out(error)
    assert not is_opted_out(classify_twilio_error(TwilioRestException(400, URI, msg="x", code=21211)))


def test_client_uses_the_configured_api_origin():
    settings = Settings(
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_base_url="http://127.0.0.1:9999/",
    )
    client = twilio_client(settings)
    assert client is twilio_client(settings)
    assert client.api.base_url == "http://127.0.0.1:9999"


def test_unreachable_twilio_is_transient():
    settings = Settings(
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_base_url=f"http://127.0.0.1:{free_port()}",
    )
    with pytest.raises(TransientError) as info:
        send_sms(settings, from_="+15550000001", to="+15550000002", body="hi")
    assert info.value.code == "connection_error"


def test_missing_credentials_are_permanent():
    with pytest.raises(PermanentError):
        send_sms(Settings(), from_="+15550000001", to="+15550000002", body="hi")
