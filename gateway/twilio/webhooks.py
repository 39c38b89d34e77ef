"""Twilio-facing webhooks: inbound SMS/MMS/WhatsApp and message status callbacks.

WhatsApp arrives on the same webhook with `whatsapp:` addresses: it is recorded the same way,
in a chat of its own (channel `whatsapp`), with WhatsApp's extra fields kept on the message.

Inbound, top to bottom: verify the signature (gateway/signature.py), read the form, record the
message with its chat and contact in one transaction (gateway/sessions.py), apply STOP/START/HELP
(gateway/keywords.py: STOP also ends the chat and queues its analysis; on WhatsApp, where Twilio
does not, STOP and START are confirmed), queue the agent's reply on RQ, answer TwiML at once.
Nothing here calls the model or Twilio's REST API while Twilio waits. Status callbacks go to
gateway/statuses.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from flask import Blueprint, Response, current_app, request
from peewee import IntegrityError
from redis.exceptions import RedisError
from rq import Retry
from twilio.twiml.messaging_response import MessagingResponse

from gateway import events, metrics
from gateway.agent.analysis import schedule_analysis
from gateway.conversations.agents import DEFAULT_HELP_MESSAGE
from gateway.conversations.answering import answer_rows
from gateway.conversations.consent import set_contact_opt_out
from gateway.conversations.lifecycle import END_BY_OPT_OUT, end_chat
from gateway.conversations.sessions import contact_state, find_inbound, pair_key, sms_session, touch_chat
from gateway.errors import TWILIO_OPTED_OUT
from gateway.logs import mask_number, traffic
from gateway.queue import REDIS_DOWN_ERRORS, RedisOutage, enqueue_reply, retry_policy
from gateway.storage.db import write_transaction
from gateway.storage.models import (
    Channel,
    Chat,
    Message,
    MessageKind,
    MessageStatus,
    ReplyState,
    Role,
    utcnow,
)
from gateway.twilio import fields
from gateway.twilio.channels import channel_of, whatsapp_details
from gateway.twilio.keywords import (
    WHATSAPP_START_CONFIRMATION,
    WHATSAPP_STOP_CONFIRMATION,
    Keyword,
    match_keyword,
)
from gateway.twilio.signature import twilio_signature_required
from gateway.twilio.statuses import (
    map_twilio_status,
    message_exists,
    opt_out_on_error,
    record_early_status,
    record_status,
)

log = logging.getLogger(__name__)

bp = Blueprint("twilio", __name__, url_prefix="/twilio")

# What Twilio expects when we have nothing to say: an empty <Response/> (built once).
EMPTY_TWIML = str(MessagingResponse())
TWIML_MIMETYPE = "text/xml"
# Twilio attaches at most 10 media to an MMS; more MediaUrlN fields than that are not Twilio's.
MAX_MEDIA = 10
# Why a text from a short code or an alphanumeric sender id gets no agent reply.
NOT_ANSWERABLE = "Not answered: replies go to phone numbers and WhatsApp addresses only."
# This process's view of Redis: a webhook arriving during an outage is recorded and answered
# at once, its reply queued by the sweep when Redis is back (two log lines per outage).
WEB_REDIS = RedisOutage("web", log)


class InvalidWebhook(ValueError):
    """A webhook form that lacks what Twilio always sends; the message is the reason."""


class DuplicateMessage(Exception):
    """This MessageSid is recorded already (Twilio retried, or someone replayed the request)."""


@dataclass(frozen=True)
class InboundSms:
    """The parts of Twilio's inbound message webhook the gateway uses; the rest is ignored."""

    sid: str
    from_number: str  # the person
    to_number: str  # our Twilio number
    body: str
    media: list[dict[str, str]] = field(default_factory=list)
    opt_out_type: str | None = None  # STOP/START/HELP when Twilio's Advanced Opt-Out matched
    truncated: bool = False  # Body was longer than Twilio's 1600 characters and was cut
    details: dict[str, str] | None = None  # WhatsApp's extra fields (gateway/twilio/channels.py)


@dataclass(frozen=True)
class Recorded:
    """What recording an inbound message decided."""

    message_id: int
    chat_id: str
    reply_state: ReplyState
    keyword: Keyword | None
    chat_ended: bool  # STOP ended the chat
    chat_started: bool  # this text opened a new chat
    retry: Retry | None  # the reply job's retries, from the chat's agent
    answer: str | None = None  # the TwiML answer to this message (HELP; STOP/START on WhatsApp)


def twiml(response: MessagingResponse | None = None) -> Response:
    """A TwiML answer: the empty `<Response/>` unless a response is given."""
    return Response(EMPTY_TWIML if response is None else str(response), mimetype=TWIML_MIMETYPE)


def bad_request(reason: str) -> Response:
    """A 400 whose body says, in a sentence, what was wrong."""
    return Response(reason + "\n", status=400, mimetype="text/plain")


def parse_inbound(form: Mapping[str, str]) -> InboundSms:
    """Read Twilio's inbound message form, cleaned (gateway/twilio/fields.py); InvalidWebhook says why not."""
    try:
        raw_sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid")
        sid = fields.sid("MessageSid", raw_sid)
        from_number = fields.address("From", form.get("From"))
        to_number = fields.address("To", form.get("To"))
        media = parse_media(form)
    except fields.InvalidField as exc:
        raise InvalidWebhook(f"{exc}: not a Twilio message webhook") from None
    body, truncated = fields.clean_text(form.get("Body"), fields.MAX_BODY_CHARS)
    if truncated:
        log.warning("twilio sms: the Body of %s is longer than Twilio sends; recorded truncated", sid)
    return InboundSms(
        sid=sid,  # type: ignore[arg-type]  # required: never None
        from_number=from_number,  # type: ignore[arg-type]
        to_number=to_number,  # type: ignore[arg-type]
        body=body,
        media=media,
        opt_out_type=fields.clean_line(form.get("OptOutType"), 32) or None,
        truncated=truncated,
        details=whatsapp_details(form) if channel_of(from_number) is Channel.WHATSAPP else None,
    )


def parse_media(form: Mapping[str, str]) -> list[dict[str, str]]:
    """The MMS attachments (NumMedia, MediaUrlN, MediaContentTypeN) as [{url, content_type}]."""
    media = []
    for index in range(fields.count("NumMedia", form.get("NumMedia"), maximum=MAX_MEDIA)):
        url = fields.clean_line(form.get(f"MediaUrl{index}"), fields.MAX_URL_LEN)
        if url:
            content_type = fields.clean_line(form.get(f"MediaContentType{index}"))
            media.append({"url": url, "content_type": content_type})
    return media


def decide_reply(keyword: Keyword | None, opted_out: bool, sender: str | None = None) -> ReplyState:
    """Whether the agent answers: not to keywords, not to a person who opted out, not to a sender
    it cannot text back (a short code, an alphanumeric sender id)."""
    if keyword is not None or opted_out or (sender is not None and not fields.answerable(sender)):
        return ReplyState.NONE
    return ReplyState.PENDING


def message_kind(keyword: Keyword | None, opted_out: bool) -> MessageKind:
    """What an inbound text is to the conversation: a keyword, a text while opted out, or a text."""
    if keyword is not None:
        return MessageKind.KEYWORD
    return MessageKind.OPTED_OUT if opted_out else MessageKind.TEXT


def record_inbound(sms: InboundSms) -> Recorded:
    """Record an inbound message with its chat and contact in one transaction.

    Raises DuplicateMessage when the MessageSid is recorded already: the unique twilio_sid
    refuses the second insert and the whole transaction (a chat it may have opened, too) rolls back.
    """
    now = utcnow()
    keyword = match_keyword(sms.body, sms.opt_out_type)
    our, theirs = sms.to_number, sms.from_number
    pair = pair_key(our, theirs)
    # The common case (an ongoing chat) is read before taking the write lock, and confirmed
    # under it by the UPDATE of the chat's activity time, which only matches an ongoing chat.
    session, contact = find_inbound(our, theirs)
    try:
        with write_transaction():
            if session is None or not touch_chat(session.chat_id, now, pair):
                session = sms_session(our, theirs, now)
                if not session.created:
                    touch_chat(session.chat_id, now)
            if contact is None:
                contact = contact_state(our, theirs)
            reply_state = decide_reply(keyword, contact.opted_out, theirs)
            message_id = Message.insert(
                chat=session.chat_id,
                role=Role.USER.value,
                kind=message_kind(keyword, contact.opted_out).value,
                content=sms.body,
                truncated=sms.truncated,
                media=sms.media,
                details=sms.details,
                twilio_sid=sms.sid,
                status=MessageStatus.RECEIVED.value,
                from_number=theirs,
                to_number=our,
                reply_state=reply_state.value,
                error_message=None if fields.answerable(theirs) else NOT_ANSWERABLE,
                created_at=now,
                updated_at=now,
            ).execute()
            ended = False
            answer = None
            # Twilio confirms STOP/START itself on SMS (and when its Advanced Opt-Out matched), not
            # on WhatsApp: there the gateway answers them.
            confirms = channel_of(our) is Channel.WHATSAPP and not sms.opt_out_type
            if keyword is Keyword.HELP:
                answer = help_text(session.help_message)
                record_answer(session.chat_id, message_id, answer, MessageKind.HELP_ANSWER, our, theirs, now)
            if keyword is Keyword.STOP:
                if not contact.opted_out:
                    set_contact_opt_out(contact.id, True, now)
                # The person asked for no more texts: the conversation is over.
                ended = end_chat(session.chat_id, END_BY_OPT_OUT, now)
                if confirms:
                    answer = WHATSAPP_STOP_CONFIRMATION
            elif keyword is Keyword.START and contact.opted_out:
                set_contact_opt_out(contact.id, False, now)
                if confirms:
                    answer = WHATSAPP_START_CONFIRMATION
            if answer is not None and keyword is not Keyword.HELP:
                record_answer(session.chat_id, message_id, answer, MessageKind.NOTICE, our, theirs, now)
    except IntegrityError:
        if message_exists(sms.sid):
            raise DuplicateMessage(sms.sid) from None
        raise
    return Recorded(
        message_id=message_id,
        chat_id=session.chat_id,
        reply_state=reply_state,
        keyword=keyword,
        chat_ended=ended,
        chat_started=session.created,
        retry=retry_policy(session.retry_attempts, session.retry_delay),
        answer=answer,
    )


def help_text(help_message: str | None) -> str:
    """The answer to HELP: the agent's help text, else the built-in one."""
    return (help_message or "").strip() or DEFAULT_HELP_MESSAGE


def record_answer(
    chat_id: str, answered_id: int, text: str, kind: MessageKind, our: str, theirs: str, now
) -> None:
    """Store a keyword's answer (HELP's, a WhatsApp STOP/START confirmation) as a message of the chat,
    so the transcript shows what the person got.

    Twilio sends it as the TwiML answer to this very request (no SID of its own comes back), so
    it is stored as `sent`; its kind keeps it out of everything the model reads.
    """
    [row] = answer_rows(
        chat_id,
        [text],
        None,
        now,
        reply_to=answered_id,
        kind=kind,
        status=MessageStatus.SENT.value,
        from_number=our,
        to_number=theirs,
    )
    Message.insert(**row).execute()


def queue_reply(recorded: Recorded) -> None:
    """Put the reply job on RQ; when Redis is unreachable, log it: the pending sweep re-queues."""
    queue = current_app.task_queue  # type: ignore[attr-defined]
    if queue is None:
        log.error("twilio sms: no Redis configured; message %s waits for the sweep", recorded.message_id)
        return
    if not WEB_REDIS.should_try():
        # Redis is down (logged once): don't make Twilio wait on it; the sweep queues the reply.
        log.info("twilio sms: message %s waits for Redis; the sweep queues its reply", recorded.message_id)
        return
    try:
        enqueue_reply(
            queue,
            chat_id=recorded.chat_id,
            message_id=recorded.message_id,
            retry=recorded.retry,
            check_existing=False,
        )
        WEB_REDIS.ok()
    except REDIS_DOWN_ERRORS as exc:
        WEB_REDIS.failed(exc)
        log.info("twilio sms: message %s waits for Redis; the sweep queues its reply", recorded.message_id)
    except RedisError as exc:
        log.error(
            "twilio sms: could not queue the reply to message %s (%s); it stays pending for the sweep",
            recorded.message_id,
            exc,
        )


@bp.post("/sms")
@twilio_signature_required
def inbound_sms() -> Response:
    """Twilio's inbound SMS/MMS webhook: record, queue the reply, answer TwiML at once."""
    try:
        sms = parse_inbound(request.form)
    except InvalidWebhook as exc:
        log.warning("twilio sms: rejected a webhook: %s", exc)
        return bad_request(str(exc))
    try:
        recorded = record_inbound(sms)
    except DuplicateMessage:
        log.info("twilio sms: %s is recorded already; not answering twice", sms.sid)
        metrics.count("texts_received", outcome="duplicate")
        return twiml()
    log.info(
        "sms in: chat %s from %s, received (%s; reply %s)",
        recorded.chat_id,
        mask_number(sms.from_number),
        recorded.keyword.value if recorded.keyword else "text",
        recorded.reply_state.value,
        extra=traffic(recorded.chat_id, "in", MessageStatus.RECEIVED.value, sms.from_number),
    )
    response = None
    if recorded.reply_state is ReplyState.NONE:
        metrics.count("texts_received", outcome="keyword" if recorded.keyword else "opted_out")
    if recorded.reply_state is ReplyState.PENDING:
        queue_reply(recorded)
    elif recorded.chat_ended:
        # Only chat_id is read; schedule_analysis logs (never raises) when Redis is down.
        schedule_analysis(current_app.task_queue, Chat(chat_id=recorded.chat_id))  # type: ignore[attr-defined]
    if recorded.answer is not None:
        # TwiML, not the REST API: Twilio sends it as the answer to this request.
        response = MessagingResponse()
        response.message(recorded.answer)
    emit_inbound_events(sms, recorded)  # after the reply is queued: events never delay it
    return twiml(response)


def emit_inbound_events(sms: InboundSms, recorded: Recorded) -> None:
    """Queue the chat events an inbound text makes (never raises; see gateway/events.py)."""
    queue, settings = current_app.task_queue, current_app.config["SETTINGS"]  # type: ignore[attr-defined]
    if recorded.chat_started:
        events.emit(queue, settings, events.CHAT_STARTED, recorded.chat_id)
    message = {
        "message_id": f"msg_{recorded.message_id}",
        "role": Role.USER.value,
        "content": sms.body,
        "media": sms.media,
        "from_number": sms.from_number,
        "to_number": sms.to_number,
        "twilio_sid": sms.sid,
    }
    events.emit(queue, settings, events.MESSAGE_RECEIVED, recorded.chat_id, message=message)
    if recorded.chat_ended:
        events.emit(queue, settings, events.CHAT_ENDED, recorded.chat_id)


@bp.post("/status")
@twilio_signature_required
def status_callback() -> Response:
    """Twilio's message status callback: record the status unless the message is past it."""
    form = request.form
    try:
        sid = fields.sid("MessageSid", form.get("MessageSid") or form.get("SmsSid"))
        error_code = fields.error_code(form.get("ErrorCode"))
        # Read only after a 21610, but checked always: a callback is whole or refused.
        callback_from = fields.address("From", form.get("From"), required=False)
        callback_to = fields.address("To", form.get("To"), required=False)
    except fields.InvalidField as exc:
        reason = f"{exc}: this does not look like a Twilio status callback"
        log.warning("twilio status: rejected a callback: %s", reason)
        return bad_request(reason)
    twilio_status = fields.clean_line(form.get("MessageStatus") or form.get("SmsStatus"), 32)
    if not twilio_status:
        reason = "missing MessageStatus: this does not look like a Twilio status callback"
        log.warning("twilio status: rejected a callback: %s", reason)
        return bad_request(reason)
    error_message = fields.clean_text(form.get("ErrorMessage"), fields.MAX_ERROR_MESSAGE)[0].strip() or None
    status = map_twilio_status(twilio_status)
    if status is None:
        log.info("twilio status: %s reported %r, which is not a delivery state; ignored", sid, twilio_status)
    elif record_status(sid, status, error_code=error_code, error_message=error_message):
        emit_status_event(sid, status.value, error_code, error_message)
    elif not message_exists(sid):
        # Most likely the worker has not stored the SID of a part it just sent: keep the status
        # and apply it once the SID is stored. 200 all the same (an error makes Twilio retry).
        log.info("twilio status: no message has sid %s yet; %s kept for when it does", sid, twilio_status)
        record_early_status(sid, status, error_code=error_code, error_message=error_message)
    if error_code == str(TWILIO_OPTED_OUT):
        our, theirs = _outbound_numbers(sid, callback_from, callback_to)
        opt_out_on_error(error_code, our, theirs)
    return twiml()


def emit_status_event(sid: str, status: str, error_code: str | None, error_message: str | None) -> None:
    """Queue the `message_status` event of a reply part whose status moved (never raises)."""
    row = Message.select(Message.id, Message.chat).where(Message.twilio_sid == sid).tuples().first()
    if row is None:
        return
    message = {
        "message_id": f"msg_{row[0]}",
        "twilio_sid": sid,
        "status": status,
        "error_code": error_code,
        "error_message": error_message,
    }
    queue, settings = current_app.task_queue, current_app.config["SETTINGS"]  # type: ignore[attr-defined]
    events.emit(queue, settings, events.MESSAGE_STATUS, row[1], message=message)


def _outbound_numbers(sid: str, our: str | None, theirs: str | None) -> tuple[str | None, str | None]:
    """(our number, the recipient) of an outbound message: from the callback, else from its row."""
    if our and theirs:
        return our, theirs
    row = (
        Message.select(Message.from_number, Message.to_number)
        .where(Message.twilio_sid == sid)
        .tuples()
        .first()
    )
    return row if row else (None, None)
