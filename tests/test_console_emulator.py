"""The built-in Twilio emulator through the real twilio client: Twilio's shapes, codes and callbacks."""

from __future__ import annotations

import pytest

from gateway.config import Settings
from gateway.dev_phone.emulator import TwilioEmulator
from gateway.errors import PermanentError
from gateway.twilio.client import send_sms
from gateway.twilio.media import fetch_media, policy_for
from gateway.twilio.numbers import configure_number, list_numbers, numbers_client

OURS = "+15005550006"
PERSON = "+15555550100"


@pytest.fixture
def emulator():
    """A started emulator with one of our numbers."""
    emu = TwilioEmulator().start()
    emu.add_number(OURS)
    yield emu
    emu.stop()


@pytest.fixture
def emulated(emulator, app, settings_with) -> Settings:
    """Settings whose twilio client talks to the emulator."""
    return settings_with(
        twilio_account_sid=emulator.account_sid,
        twilio_auth_token=emulator.auth_token,
        twilio_api_base_url=emulator.url,
    )


def test_send_answers_like_twilio_and_refuses_like_twilio(emulator, emulated):
    """A send gets an SM sid and `queued`; a foreign From is 21606; an opted-out person 21610."""
    sid, status = send_sms(emulated, from_=OURS, to=PERSON, body="hi")
    assert sid.startswith("SM") and len(sid) == 34 and status == "queued"
    assert emulator.thread(PERSON, OURS)[0]["body"] == "hi"
    with pytest.raises(PermanentError) as foreign:
        send_sms(emulated, from_="+15550009999", to=PERSON, body="hi")
    assert foreign.value.code == "21606"
    emulator.opted_out.add((OURS, PERSON))
    with pytest.raises(PermanentError) as opted_out:
        send_sms(emulated, from_=OURS, to=PERSON, body="hi")
    assert opted_out.value.code == "21610"


def test_numbers_configure_points_the_webhook_here(emulator, emulated):
    """What `smsgw numbers configure` does works against the emulator's IncomingPhoneNumbers."""
    client = numbers_client(emulated)
    result = configure_number(client, OURS, "https://gw.example.test")
    assert ("sms_url", "", "https://gw.example.test/twilio/sms") in result.changes
    assert list_numbers(client, OURS)[0].sms_url == "https://gw.example.test/twilio/sms"
    assert emulator.number(OURS)["status_callback"] == "https://gw.example.test/twilio/status"


def test_media_is_served_at_twilio_shaped_urls_the_fetch_path_accepts(emulator, emulated):
    """An MMS from the phone leaves its image where gateway/twilio/media.py fetches it (with auth)."""
    url = emulator.add_media("image/png", b"\x89PNG\r\n\x1a\n....", "MM" + "a" * 32)
    content_type, data = fetch_media(url, policy_for(emulated))
    assert content_type == "image/png" and data.startswith(b"\x89PNG")
