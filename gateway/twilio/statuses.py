"""Message delivery statuses: Twilio's names mapped to ours, and recorded without moving back.

Twilio reports a message's life as queued/accepted/scheduled -> sending -> sent ->
delivered|undelivered|failed (and read, canceled, partially_delivered). We keep the states a user
of the API acts on (`MessageStatus`): every step before Twilio handed the message to the carrier is
"queued", "canceled" is "failed", and WhatsApp's "read" is kept: it follows "delivered". Callbacks
arrive out of order, so a status is recorded only when it ranks higher than the stored one: a
failure is never left, and only "read" follows "delivered".

A callback can also arrive before the worker stored the SID Twilio's send answered with (Twilio
is fast, the worker's database write a moment later, or the worker died in between). Such a
status is kept as an EarlyStatus row and applied as soon as the SID is stored (the sending code
calls `apply_early_statuses(sid)`), or by the periodic sweep, so it is never lost.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from gateway.conversations.consent import set_opted_out
from gateway.errors import TWILIO_OPTED_OUT
from gateway.logs import mask_number
from gateway.storage.models import EarlyStatus, Message, MessageStatus, utcnow

log = logging.getLogger(__name__)

# Twilio's MessageStatus values -> ours.
TWILIO_STATUSES: dict[str, MessageStatus] = {
    "accepted": MessageStatus.QUEUED,
    "scheduled": MessageStatus.QUEUED,
    "queued": MessageStatus.QUEUED,
    "sending": MessageStatus.QUEUED,
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "undelivered": MessageStatus.UNDELIVERED,
    "partially_delivered": MessageStatus.UNDELIVERED,
    "failed": MessageStatus.FAILED,
    "canceled": MessageStatus.FAILED,
}

# The order stored statuses move in; equal ranks never replace each other. SENDING is the
# worker's own mark on a part it is handing to Twilio (gateway/conversations/delivery.py).
RANK: dict[str, int] = {
    MessageStatus.QUEUED.value: 0,
    MessageStatus.SENDING.value: 0,
    MessageStatus.SENT.value: 1,
    MessageStatus.DELIVERED.value: 2,
    MessageStatus.UNDELIVERED.value: 2,
    MessageStatus.FAILED.value: 2,
    # WhatsApp reports "read" after "delivered" (possibly before it, out of order); it replaces
    # the delivery states but never a failure, and nothing replaces it.
    MessageStatus.READ.value: 3,
}
FAILURES = frozenset({MessageStatus.UNDELIVERED.value, MessageStatus.FAILED.value})
FINAL_STATUSES = frozenset(status for status, rank in RANK.items() if rank >= 2)


def map_twilio_status(twilio_status: str | None) -> MessageStatus | None:
    """Our status for a Twilio `MessageStatus`, or None when it is not an outbound delivery state."""
    if not twilio_status:
        return None
    return TWILIO_STATUSES.get(twilio_status.strip().lower())


def lower_statuses(status: MessageStatus) -> list[str]:
    """The stored statuses that `status` may replace (a failure is replaced by nothing)."""
    return [stored for stored, rank in RANK.items() if rank < RANK[status.value] and stored not in FAILURES]


def record_status(
    twilio_sid: str,
    status: MessageStatus,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Move the message with this sid to `status` unless it is already there or further on.

    One conditional UPDATE, so concurrent callbacks cannot undo each other: the row changes only
    while its status ranks lower. A NULL status (an outbound part Twilio has not answered for
    yet) counts as lowest; inbound messages ("received") are never touched. True if it changed.
    """
    values: dict = {Message.status: status.value, Message.updated_at: utcnow()}
    if error_code:
        values[Message.error_code] = error_code
    if error_message:
        values[Message.error_message] = error_message
    query = Message.update(values).where(
        (Message.twilio_sid == twilio_sid)
        & (Message.status.is_null() | Message.status.in_(lower_statuses(status)))
    )
    return query.execute() > 0


# An early status whose SID no message takes within this long was not ours: it is dropped.
EARLY_STATUS_TTL = timedelta(days=1)


def record_early_status(
    twilio_sid: str, status: MessageStatus, *, error_code: str | None = None, error_message: str | None = None
) -> None:
    """Keep a status for a SID no message has yet; `apply_early_statuses` applies it later."""
    EarlyStatus.insert(
        twilio_sid=twilio_sid,
        status=status.value,
        error_code=error_code,
        error_message=error_message,
        received_at=utcnow(),
    ).execute()


def apply_early_statuses(twilio_sid: str | None = None) -> int:
    """Apply the kept statuses of messages whose SID is now stored (of one SID, or all); how many.

    Rows of SIDs still unknown stay, unless older than EARLY_STATUS_TTL. Never raises: the
    caller has just sent a message, and the periodic sweep applies whatever is left.
    """
    try:
        query = EarlyStatus.select().order_by(EarlyStatus.id)
        if twilio_sid is not None:
            query = query.where(EarlyStatus.twilio_sid == twilio_sid)
        else:
            query = query.where(EarlyStatus.twilio_sid.in_(Message.select(Message.twilio_sid)))
        applied = 0
        for row in list(query):
            if not message_exists(row.twilio_sid):
                continue
            record_status(
                row.twilio_sid,
                MessageStatus(row.status),
                error_code=row.error_code,
                error_message=row.error_message,
            )
            EarlyStatus.delete().where(EarlyStatus.id == row.id).execute()
            applied += 1
        if twilio_sid is None:
            EarlyStatus.delete().where(EarlyStatus.received_at < utcnow() - EARLY_STATUS_TTL).execute()
        return applied
    except Exception:
        log.warning("could not apply early status callbacks", exc_info=True)
        return 0


def message_exists(twilio_sid: str) -> bool:
    """True when a message with this Twilio sid is recorded."""
    return Message.select(Message.id).where(Message.twilio_sid == twilio_sid).exists()


def opt_out_on_error(error_code: str | None, our_number: str | None, phone_number: str | None) -> bool:
    """Mark the recipient opted out when Twilio refused to text them (21610); True if so."""
    if error_code != str(TWILIO_OPTED_OUT) or not our_number or not phone_number:
        return False
    set_opted_out(our_number, phone_number, True)
    log.info("twilio status: %s opted out of %s (error 21610)", mask_number(phone_number), our_number)
    return True
