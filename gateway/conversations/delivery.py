"""Sending stored SMS parts: each exactly once, in order, its Twilio SID stored as soon as Twilio answers.

Every text the gateway sends goes through `send_parts`: the agent's replies (replies.py), the
openings it starts (outbound.py), an operator's texts (operator.py), spend-guard notices
(refusals.py) and closing texts (lifecycle.py). Parts are stored first (`store_parts`, inside the
caller's transaction), then sent. Each part is claimed (`sending`, with the attempt's token in
`claimed_by`) before its send and its SID stored right after, so a part is never sent twice by two
attempts. A part left `sending` by an attempt that is over (its process is gone, or it failed) or
whose lease (SEND_LEASE) ran out is taken over, and Twilio is first asked whether it was accepted
(`find_sent`). A permanent failure fails the rest of the parts with its reason; Twilio's 21610
(the person opted out) also records the opt-out. A free-form WhatsApp part is not sent outside the
24-hour window (failed with Twilio's 63016; templates are exempt). A gateway notice
(`send_notice`) is sent once and its failure recorded, never raised.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from peewee import InterfaceError, OperationalError

from gateway import metrics
from gateway.agent import llm
from gateway.config import Settings
from gateway.conversations.answering import answer_rows
from gateway.conversations.consent import set_opted_out
from gateway.errors import GatewayError, PermanentError, TransientError, code_and_reason, is_opted_out
from gateway.logs import mask_number, traffic
from gateway.processes import attempt_token, claim_is_abandoned
from gateway.storage.db import database
from gateway.storage.models import Channel, Message, MessageKind, MessageStatus, utcnow
from gateway.twilio.channels import may_send_free_form, outside_window_error
from gateway.twilio.client import find_sent, send_sms
from gateway.twilio.senders import Sender, sender_for, wait_for_slot
from gateway.twilio.statuses import apply_early_statuses, map_twilio_status

log = logging.getLogger(__name__)

# A part marked `sending` (claimed by an attempt that is talking to Twilio) with no SID yet is
# taken over by another attempt only after this long: longer than one Twilio call may take, so
# the first attempt has either stored the SID or died by then.
SEND_LEASE = timedelta(seconds=90)
# A taken-over part is looked for among Twilio's messages created since its claim, minus this
# (Twilio's clock and ours differ a little; its dates have whole seconds).
SEND_CLOCK_SLACK = timedelta(seconds=5)
# Tries to record a sent part's SID when the database connection drops meanwhile.
SID_STORE_ATTEMPTS = 3
# The code of the TransientError raised when another attempt holds a part of this reply.
IN_PROGRESS = "reply_in_progress"


@dataclass(frozen=True)
class SmsTarget:
    """Who the parts go to (read once, so later phases need no lazy loads)."""

    chat_id: str
    our_number: str
    their_number: str
    channel: str = Channel.SMS.value


def status_callback_url(settings: Settings) -> str | None:
    """Where Twilio reports delivery of our parts, when the gateway knows its public origin."""
    return f"{settings.public_base_url.rstrip('/')}/twilio/status" if settings.public_base_url else None


# What `send_parts` reads of a stored part.
PART_COLUMNS = (
    Message.id,
    Message.content,
    Message.media,
    Message.details,
    Message.part_index,
    Message.twilio_sid,
)


def send_parts(settings: Settings, target: SmsTarget, parts: list[Message]) -> int:
    """Send, in order, each of these stored parts that has no SID yet; return how many were sent.

    Each part is claimed before the send and its SID stored right after, so a part is never
    sent twice by two attempts; a permanent failure fails the rest of the parts with its reason.
    """
    callback = status_callback_url(settings)
    with database.connection_context():
        sender = sender_for(settings, target.our_number)
        if target.channel == Channel.WHATSAPP.value:
            _check_session_window(target, parts)
    sent = 0
    for index, part in enumerate(parts):
        if part.twilio_sid:
            continue
        with attempt_token() as token:
            if _send_part(settings, target, parts, index, token, callback, sender):
                sent += 1
    return sent


def _check_session_window(target: SmsTarget, parts: list[Message]) -> None:
    """Fail (PermanentError, Twilio's 63016) the unsent free-form parts when WhatsApp's window is closed.

    Every path checks the window first in its own way (a refusal, a skipped notice, a failed
    opening); this is the last word before Twilio, for a part whose send came later than that.
    Templates (`content_sid`) may go at any time.
    """
    free_form = [
        p.id
        for p in parts
        if not p.twilio_sid and not (isinstance(p.details, dict) and p.details.get("content_sid"))
    ]
    if free_form and not may_send_free_form(target.channel, target.our_number, target.their_number):
        exc = outside_window_error()
        metrics.count("reply_parts", len(free_form), result="failed", error_code=str(exc.code))
        record_part_failure(free_form, exc)
        raise exc


def _send_part(
    settings: Settings,
    target: SmsTarget,
    parts: list[Message],
    index: int,
    token: str,
    callback: str | None,
    sender: Sender,
) -> bool:
    """Claim, send and record one part (see send_parts); False when another attempt just sent it."""
    part = parts[index]
    claim = _claim(part.id, token)
    if claim is None:
        with database.connection_context():
            if Message.select(Message.twilio_sid).where(Message.id == part.id).scalar():
                return False  # another attempt sent it a moment ago
        raise TransientError("Another attempt is sending this reply right now.", IN_PROGRESS)
    try:
        # The number's send rate (max_mps), shared by every worker, taken as close to the send
        # as possible; SenderPaced (the part is released) when the next slot is far off.
        wait_for_slot(settings, sender)
        template = part.details if isinstance(part.details, dict) else {}
        # Taken over from a sender that died mid-send: Twilio may have accepted the part
        # already (the sender died before storing the SID); then it is not sent again.
        found = (
            find_sent(
                settings,
                from_=target.our_number,
                to=target.their_number,
                body=part.content,
                since=claim - SEND_CLOCK_SLACK,
            )
            if claim is not True
            else None
        )
        sid, status = found or send_sms(
            settings,
            from_=target.our_number,
            to=target.their_number,
            body=part.content,
            media_urls=[m["url"] for m in part.media or [] if isinstance(m, dict) and m.get("url")],
            status_callback=callback,
            content_sid=template.get("content_sid"),
            content_variables=template.get("content_variables"),
            messaging_service_sid=sender.messaging_service_sid,
        )
    except PermanentError as exc:
        unsent = [p.id for p in parts[index:] if not p.twilio_sid]
        metrics.count("reply_parts", len(unsent), result="failed", error_code=str(exc.code or "error"))
        record_part_failure(unsent, exc)
        if is_opted_out(exc):
            set_opted_out(target.our_number, target.their_number)
        raise
    except Exception as exc:
        _unclaim(part.id)  # let the next attempt send it at once
        code = str(getattr(exc, "code", None) or type(exc).__name__)
        metrics.count("reply_parts", result="retried", error_code=code)
        raise
    _store_sid(part.id, sid, status)
    metrics.count("reply_parts", result="sent", error_code="")
    log_part_out(target, index, len(parts), _our_status(status))
    return True


def _store_sid(part_id: int, sid: str, status: str | None) -> None:
    """Record the SID Twilio gave a part; a dropped database connection is retried a few times.

    Twilio has the part by now: losing the SID would leave the part claimed until another
    attempt asks Twilio for it (find_sent), so a fresh connection is worth a few tries.
    """
    for attempt in range(SID_STORE_ATTEMPTS):
        try:
            with database.connection_context():
                Message.update(twilio_sid=sid, status=_our_status(status), updated_at=utcnow()).where(
                    Message.id == part_id
                ).execute()
                apply_early_statuses(sid)  # a callback that beat us here
            return
        except (OperationalError, InterfaceError):
            if attempt == SID_STORE_ATTEMPTS - 1:
                raise
            log.warning("part %s: storing its SID %s failed (database); trying again", part_id, sid)
            time.sleep(0.5 * (attempt + 1))


def log_part_out(target: SmsTarget, index: int, count: int, status: str) -> None:
    """The one INFO line of a part Twilio took (the number shown by its last 4 digits)."""
    log.info(
        "sms out: chat %s to %s, part %d/%d %s",
        target.chat_id,
        mask_number(target.their_number),
        index + 1,
        count,
        status,
        extra=traffic(target.chat_id, "out", status, target.their_number, part=index + 1),
    )


def _claim(part_id: int, token: str) -> bool | datetime | None:
    """Mark a part `sending` by this attempt (`token`) unless a live attempt holds it.

    True: this attempt may send it. A datetime: the part was taken over from an attempt that
    ended mid-send (its process died, or it failed after claiming; or its lease expired) at
    about that time; Twilio must be asked whether that send went through. None: another live
    attempt holds it.
    """
    now = utcnow()
    mine = {Message.status: MessageStatus.SENDING.value, Message.claimed_by: token, Message.updated_at: now}
    with database.connection_context():
        if (
            Message.update(mine)
            .where(
                (Message.id == part_id)
                & Message.twilio_sid.is_null()
                & (Message.status == MessageStatus.QUEUED.value)
            )
            .execute()
        ):
            return True
        row = (
            Message.select(Message.status, Message.claimed_by, Message.updated_at)
            .where((Message.id == part_id) & Message.twilio_sid.is_null())
            .first()
        )
        if row is None or row.status != MessageStatus.SENDING.value:
            return None
        if not (row.updated_at < now - SEND_LEASE or claim_is_abandoned(row.claimed_by)):
            return None
        holder = (
            Message.claimed_by.is_null() if row.claimed_by is None else Message.claimed_by == row.claimed_by
        )
        taken = (
            Message.update(mine)
            .where(
                (Message.id == part_id)
                & Message.twilio_sid.is_null()
                & (Message.status == MessageStatus.SENDING.value)
                & (Message.updated_at == row.updated_at)
                & holder
            )
            .execute()
        )
        if taken:
            log.warning("part %s: its sender died mid-send; taking it over (checking Twilio first)", part_id)
        return row.updated_at if taken else None


def _unclaim(part_id: int) -> None:
    """Give a claimed part back after a failed send (best effort: the lease expires anyway)."""
    try:
        with database.connection_context():
            Message.update(status=MessageStatus.QUEUED.value, updated_at=utcnow()).where(
                (Message.id == part_id)
                & Message.twilio_sid.is_null()
                & (Message.status == MessageStatus.SENDING.value)
            ).execute()
    except Exception:
        log.warning("could not release the claim on part %s", part_id, exc_info=True)


def _our_status(twilio_status: str | None) -> str:
    """Twilio's status of a just-created message, in our vocabulary (the status callbacks' mapping)."""
    return (map_twilio_status(twilio_status) or MessageStatus.QUEUED).value


def record_part_failure(part_ids: list[int], error: Exception) -> None:
    """Record that these parts will never be sent, with the error that stopped them."""
    if not part_ids:
        return
    code, reason = code_and_reason(error)
    with database.connection_context():
        Message.update(
            status=MessageStatus.FAILED.value, error_code=code, error_message=reason, updated_at=utcnow()
        ).where(Message.id.in_(part_ids) & Message.twilio_sid.is_null()).execute()


def store_parts(
    target: SmsTarget,
    texts: list[str],
    now: datetime,
    *,
    kind: MessageKind = MessageKind.TEXT,
    reply_to: int | None = None,
    completion: llm.Completion | None = None,
    media: list[dict] | None = None,
    details: dict | None = None,
    tool_calls: list[dict] | None = None,
) -> list[int]:
    """Store an outbound text as `queued` parts to the target (in the caller's transaction); their ids."""
    rows = answer_rows(
        target.chat_id,
        texts,
        completion,
        now,
        reply_to=reply_to,
        kind=kind,
        status=MessageStatus.QUEUED.value,
        from_number=target.our_number,
        to_number=target.their_number,
        media=media,
        details=details,
        tool_calls=tool_calls,
    )
    return [Message.insert(**row).execute() for row in rows]


def stored_parts(where) -> list[Message]:
    """The stored parts matching `where`, in sending order (the order they were stored in)."""
    return list(Message.select(*PART_COLUMNS).where(where).order_by(Message.id))


def send_notice(settings: Settings, target: SmsTarget, part_ids: list[int], what: str) -> int:
    """Send a gateway notice's stored parts once; a failure is recorded on them, logged, not raised.

    A notice (a closing text, a spend-guard notice) is a courtesy sent from a sweep or a refusal:
    raising would hide other work behind one person's bad number, and a retry would come late.
    """
    with database.connection_context():
        parts = stored_parts(Message.id.in_(part_ids))
    try:
        return send_parts(settings, target, parts)
    except GatewayError as exc:
        log.warning("%s in chat %s was not sent: %s", what, target.chat_id, exc)
        record_part_failure(part_ids, exc)
        return 0
