"""What Twilio's message error codes (and the gateway's own failure codes) mean, in words for a person."""

from __future__ import annotations

# https://www.twilio.com/docs/api/errors: the codes a message's status callback or a send most often carries.
MEANINGS = {
    "20003": "Twilio refused the account's credentials.",
    "20429": "Twilio asked us to slow down (too many requests).",
    "21211": "The recipient's number is not a valid phone number.",
    "21408": "Sending to this country is not enabled on the Twilio account.",
    "21606": "The sending number cannot send messages (not an SMS-capable number of this account).",
    "21610": "The recipient replied STOP: Twilio blocks texts to them from this number.",
    "21611": "Too many messages are queued on the sending number.",
    "21614": "The recipient's number is not a mobile number.",
    "21617": "The message is longer than Twilio's 1600-character limit.",
    "30001": "Twilio's queue for this number overflowed.",
    "30002": "The Twilio account is suspended.",
    "30003": "The recipient's phone is off or out of reach.",
    "30004": "The recipient blocked this message (or their carrier did).",
    "30005": "The recipient's number does not exist or is not in service.",
    "30006": "The recipient's number is a landline or its carrier cannot receive texts.",
    "30007": "The carrier filtered the message as spam.",
    "30008": "The carrier failed to deliver it for an unknown reason.",
    "30032": "The toll-free number is not verified for sending.",
    "30034": "The number is not registered for A2P 10DLC messaging.",
    # The gateway's own codes (gateway/conversations/replies.py, gateway/errors.py).
    "connection_error": "Twilio could not be reached.",
    "twilio_not_configured": "Twilio credentials are not set on the gateway.",
    "internal_error": "The gateway hit an internal error.",
}


def meaning(code: str | None) -> str | None:
    """The meaning of an error code in words, or None when it is not one we know."""
    return MEANINGS.get(str(code)) if code else None
