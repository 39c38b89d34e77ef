"""Webhook fields, cleaned or refused the same way on every backend, before anything is stored.

Twilio's forms hold text (Body, ErrorMessage, media URLs) and identifiers (SIDs, numbers, error
codes). Text is cleaned: NUL and the other control characters a phone never shows are dropped
(PostgreSQL's text cannot even hold NUL) and over-long values are cut. Identifiers are refused
with a reason when they are not the shape Twilio sends, so a forged or broken form gets a 400
that says why instead of a database error.

Addresses Twilio sends in From/To: E.164 numbers (`+14155550123`), short codes (3 to 8 digits),
alphanumeric sender ids (up to 11 letters, digits and spaces, at least one letter) and
WhatsApp addresses (`whatsapp:+14155550123`), which are recorded as they are.
"""

from __future__ import annotations

import re

# Twilio refuses to send a body longer than 1,600 characters (error 21617); a longer inbound
# Body is not Twilio's, and is recorded cut to this length with Message.truncated set.
MAX_BODY_CHARS = 1600
MAX_SID_LEN = 64
MAX_ADDRESS_LEN = 32  # the column; `whatsapp:+` and 15 digits is 25
MAX_URL_LEN = 2048
MAX_SHORT_TEXT = 255  # content types, status names, OptOutType
MAX_ERROR_MESSAGE = 1000
MAX_ERROR_CODE = 16  # the column

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
SHORT_CODE = re.compile(r"[0-9]{3,8}")
ALPHANUMERIC_SENDER = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
WHATSAPP = re.compile(r"whatsapp:\+[1-9][0-9]{1,14}")
SID = re.compile(r"[A-Za-z0-9_-]+")
ERROR_CODE = re.compile(r"[0-9]{1,16}")
# C0 controls but tab, newline and carriage return; DEL; C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_OR_BREAK = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidField(ValueError):
    """A webhook field that Twilio would never send; the message says which and why."""


def clean_text(value: str | None, max_chars: int) -> tuple[str, bool]:
    """Text without control characters (tab and line breaks kept), cut to `max_chars`; (text, cut?)."""
    text = _CONTROL.sub("", value or "")
    if len(text) > max_chars:
        return text[:max_chars], True
    return text, False


def clean_line(value: str | None, max_chars: int = MAX_SHORT_TEXT) -> str:
    """A one-line value (URL, content type, status): no control characters or breaks, stripped, cut."""
    return _CONTROL_OR_BREAK.sub("", value or "").strip()[:max_chars]


def sid(name: str, value: str | None, *, required: bool = True) -> str | None:
    """A Twilio SID (letters, digits, `_`, `-`; at most 64 characters), or InvalidField."""
    text = (value or "").strip()
    if not text:
        if required:
            raise InvalidField(f"missing {name}")
        return None
    if len(text) > MAX_SID_LEN:
        raise InvalidField(f"{name} is longer than {MAX_SID_LEN} characters")
    if not SID.fullmatch(text):
        raise InvalidField(f"{name} holds characters a Twilio SID never has")
    return text


def address(name: str, value: str | None, *, required: bool = True) -> str | None:
    """A From/To address as Twilio sends it (E.164, short code, sender id, whatsapp:), or InvalidField."""
    text = (value or "").strip()
    if not text:
        if required:
            raise InvalidField(f"missing {name}")
        return None
    if len(text) > MAX_ADDRESS_LEN:
        raise InvalidField(f"{name} is longer than {MAX_ADDRESS_LEN} characters: not a phone number")
    if _CONTROL_OR_BREAK.search(text):
        raise InvalidField(f"{name} holds control characters: not a phone number")
    if E164.fullmatch(text) or SHORT_CODE.fullmatch(text) or WHATSAPP.fullmatch(text):
        return text
    if ALPHANUMERIC_SENDER.fullmatch(text):
        return text
    hint = ""
    if text.isdigit():
        hint = " (an E.164 number starts with +; a + sent unencoded in a form arrives as a space)"
    raise InvalidField(
        f"{name} {text!r} is not an E.164 number, a short code, an alphanumeric sender id "
        f"or a whatsapp: address{hint}"
    )


def answerable(address_: str) -> bool:
    """True when the gateway can text this sender back: an E.164 number (SMS) or a whatsapp: address."""
    return E164.fullmatch(address_) is not None or WHATSAPP.fullmatch(address_) is not None


def error_code(value: str | None) -> str | None:
    """Twilio's numeric ErrorCode, or None when absent; InvalidField when it is not a number."""
    text = (value or "").strip()
    if not text:
        return None
    if not ERROR_CODE.fullmatch(text):
        raise InvalidField(f"ErrorCode must be a number of at most {MAX_ERROR_CODE} digits")
    return text


def count(name: str, value: str | None, *, maximum: int) -> int:
    """A small non-negative count such as NumMedia (absent: 0), or InvalidField."""
    text = (value or "").strip()
    if not text:
        return 0
    if not text.isdigit() or len(text) > 6:
        raise InvalidField(f"{name} must be a whole number from 0 to {maximum}")
    return min(int(text), maximum)
