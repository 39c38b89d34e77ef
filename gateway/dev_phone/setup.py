"""How `smsgw dev` brings up the Twilio emulator: made-up credentials, our numbers, their webhooks."""

from __future__ import annotations

import logging

from gateway.config import Settings
from gateway.dev_phone.emulator import TwilioEmulator
from gateway.storage.models import PhoneNumber
from gateway.twilio.numbers import SMS_PATH, STATUS_PATH, register_number

log = logging.getLogger(__name__)

# The number the emulator gives a fresh gateway (Twilio's test "From" number that always works).
DEFAULT_NUMBER = "+15005550006"


def start_twilio_emulator(settings: Settings, host: str, port: int) -> tuple[TwilioEmulator, Settings]:
    """Start the emulator; settings that point the twilio client (web and worker) at it."""
    emulator = TwilioEmulator().start()
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    settings = settings.model_copy(
        update={
            "twilio_account_sid": emulator.account_sid,
            "twilio_auth_token": emulator.auth_token,
            "twilio_api_base_url": emulator.url,
            # The emulator calls the webhooks here, signed for this origin, as Twilio calls the public one.
            "public_base_url": settings.public_base_url or f"http://{local}:{port}",
            "twilio_validate_signatures": True,
        }
    )
    log.info("built-in Twilio emulator at %s (no Twilio credentials set)", emulator.url)
    return emulator, settings


def provision_numbers(emulator: TwilioEmulator, settings: Settings) -> list[str]:
    """Give the emulator every number the gateway knows (a default one on a fresh database), each
    with its SMS webhook pointing here; returns them."""
    base = (settings.public_base_url or "").rstrip("/")
    numbers = [row.phone_number for row in PhoneNumber.select(PhoneNumber.phone_number)] or [DEFAULT_NUMBER]
    for number in numbers:
        sid = emulator.add_number(number, sms_url=base + SMS_PATH, status_callback=base + STATUS_PATH)
        register_number(number, sid)
    return numbers
