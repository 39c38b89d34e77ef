"""STOP/START/HELP: which inbound texts are opt-out, opt-in or help requests.

The lists are Twilio's default opt-out handling for long codes and toll-free numbers: a message
that is exactly one of these words (any case, surrounding whitespace ignored) is a keyword. When
a Messaging Service with Advanced Opt-Out matched a keyword of its own, Twilio tells us in the
`OptOutType` parameter (STOP, START or HELP); that verdict wins over our own matching.
"""

from __future__ import annotations

from enum import StrEnum


class Keyword(StrEnum):
    """What a keyword asks for."""

    STOP = "STOP"  # opt out: no more messages from this number
    START = "START"  # opt back in
    HELP = "HELP"  # tell me who you are and how to opt out


# On SMS, Twilio answers STOP and START itself (long codes, toll-free); on WhatsApp it does not,
# so the gateway confirms them there (a TwiML answer to the person's own message, inside the
# 24-hour window by definition): STOP every time, START when it lifted an opt-out.
WHATSAPP_STOP_CONFIRMATION = (
    "You are unsubscribed: no more WhatsApp messages from this number. Reply START to subscribe again."
)
WHATSAPP_START_CONFIRMATION = (
    "You are subscribed again to WhatsApp messages from this number. Reply STOP to unsubscribe."
)

OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})

_WORDS: dict[str, Keyword] = {
    **{word: Keyword.STOP for word in OPT_OUT_WORDS},
    **{word: Keyword.START for word in OPT_IN_WORDS},
    **{word: Keyword.HELP for word in HELP_WORDS},
}
# No keyword is longer than this: longer bodies skip the strip/upper work.
_LONGEST = max(len(word) for word in _WORDS)


def match_keyword(body: str | None, opt_out_type: str | None = None) -> Keyword | None:
    """The keyword an inbound text is, or None; Twilio's `OptOutType` wins when it names one."""
    if opt_out_type:
        verdict = opt_out_type.strip().upper()
        if verdict in Keyword.__members__:
            return Keyword(verdict)
    if not body or len(body) > _LONGEST + 32:  # generous room for whitespace around the word
        return None
    return _WORDS.get(body.strip().upper())
