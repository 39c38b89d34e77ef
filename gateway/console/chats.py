"""The console's chats: the list (filters, search, keyset pages), a chat's page with its live
transcript, its media served to signed-in operators, ending a chat, and human takeover."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from flask import Response, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from peewee import fn

from gateway import events
from gateway.agent.memory import PROFILE_SCHEMA, profile_key_for
from gateway.api.errors import ApiError
from gateway.api.paging import page_of_chats
from gateway.api.serializers import public_status
from gateway.console import bp
from gateway.conversations import operator
from gateway.storage.models import (
    Agent,
    Channel,
    Chat,
    ChatStatus,
    ChatType,
    Message,
    MessageKind,
    PhoneNumber,
    Role,
    UserProfile,
)
from gateway.twilio import media
from gateway.twilio.channels import address_for
from gateway.twilio.error_codes import meaning

log = logging.getLogger(__name__)

PAGE_SIZE = 25
# How often an open chat page asks whether anything changed (milliseconds).
POLL_MS = 1500
# How the pages name a chat's channel (API chats have no channel of their own).
CHANNEL_LABELS = {Channel.SMS.value: "SMS", Channel.WHATSAPP.value: "WhatsApp"}


@bp.app_template_filter("channel_label")
def channel_label(chat: Chat) -> str:
    """What kind of chat it is, in words: SMS, WhatsApp or API."""
    if chat.chat_type != ChatType.SMS.value:
        return "API"
    return CHANNEL_LABELS.get(chat.channel, chat.channel or "SMS")


def agent_names() -> dict[str, str]:
    """{agent_id: name} of every agent, deleted ones included (old chats still name them)."""
    return {a.agent_id: (a.name or a.agent_id) for a in Agent.select(Agent.agent_id, Agent.name)}


@bp.get("/")
def home():
    """The console opens on the chats."""
    return redirect(url_for("console.chats"))


@bp.get("/chats")
def chats():
    """Chats, newest first, filtered and searched, one keyset page at a time."""
    args = request.args
    query = Chat.select()
    if args.get("agent"):
        query = query.where(Chat.agent == args["agent"])
    if args.get("status") in {s.value for s in ChatStatus}:
        query = query.where(Chat.chat_status == args["status"])
    if args.get("type") in {t.value for t in ChatType}:
        query = query.where(Chat.chat_type == args["type"])
    if args.get("channel") in CHANNEL_LABELS:
        query = query.where(Chat.channel == args["channel"])
    if args.get("number"):
        # Our number's chats on every channel (a WhatsApp chat keeps our `whatsapp:` address).
        number = args["number"]
        query = query.where(Chat.from_number.in_([number, address_for(Channel.WHATSAPP, number)]))
    search = (args.get("q") or "").strip()
    if search:
        digits = "".join(c for c in search if c.isdigit())
        # The person's number as typed, with or without +, spaces or dashes.
        query = query.where(Chat.to_number.contains(digits) if digits else Chat.user_id == search)
    try:
        rows, has_more, next_key = page_of_chats(query, limit=PAGE_SIZE, cursor=args.get("after") or None)
    except ApiError:
        flash("That page link is out of date; here is the first page.")
        rows, has_more, next_key = page_of_chats(query, limit=PAGE_SIZE, cursor=None)
    filters = {k: v for k, v in args.items() if k != "after" and v}
    return render_template(
        "console/chats.html",
        chats=rows,
        has_more=has_more,
        next_url=url_for("console.chats", after=next_key, **filters) if has_more else None,
        filters=filters,
        agents=agent_names(),
        numbers=[n.phone_number for n in PhoneNumber.select(PhoneNumber.phone_number)],
        statuses=[s.value for s in ChatStatus],
        types=[t.value for t in ChatType],
        channels=CHANNEL_LABELS,
    )


def chat_or_404(chat_id: str) -> Chat:
    """The chat named in the URL, or a 404 page."""
    chat = Chat.get_or_none(Chat.chat_id == chat_id)
    if chat is None:
        abort(404)
    return chat


def transcript(chat: Chat) -> list[dict]:
    """The chat's messages, oldest first, as the template shows them."""
    rows = list(Message.select().where(Message.chat == chat.chat_id).order_by(Message.id))
    return [
        {
            "id": m.id,
            "who": speaker(m),
            "role": m.role,
            "kind": m.kind,
            "content": m.content,
            "time": m.created_at,
            "status": status_word(m.status),
            "error_code": m.error_code,
            "error": m.error_message or meaning(m.error_code),
            "media": [
                {"index": i, "content_type": item.get("content_type") or "", "image": media.is_image(item)}
                for i, item in enumerate(m.media or [])
                if isinstance(item, dict)
            ],
            "tokens": (m.prompt_tokens or 0) + (m.completion_tokens or 0),
            "tool_calls": [tool_call_line(c) for c in m.tool_calls or [] if isinstance(c, dict)],
        }
        for m in rows
    ]


# A tool call's outcome (gateway/agent/tools.py) in words.
TOOL_OUTCOMES = {
    "ok": "answered",
    "failed": "failed",
    "timeout": "timed out",
    "unknown_tool": "no such tool",
    "refused": "refused",
    "bad_arguments": "bad arguments",
}


def tool_call_line(call: dict) -> dict:
    """One tool call the agent made, as the transcript shows it: name, arguments, outcome, answer."""
    arguments = call.get("arguments")
    return {
        "name": str(call.get("name", "")),
        "arguments": json.dumps(arguments, ensure_ascii=False)
        if isinstance(arguments, dict)
        else str(arguments),
        "outcome": str(call.get("outcome", "")),
        "outcome_text": TOOL_OUTCOMES.get(str(call.get("outcome", "")), str(call.get("outcome", ""))),
        "result": str(call.get("result", ""))[:500],
    }


def speaker(message: Message) -> str:
    """Who wrote a message, in words."""
    if message.kind == MessageKind.OPERATOR.value:
        return "Operator"
    if message.role == Role.USER.value:
        return "Person"
    if message.kind in (MessageKind.NOTICE.value, MessageKind.HELP_ANSWER.value):
        return "Gateway"
    return "Agent"


def status_word(status: str | None) -> str | None:
    """A stored delivery status as operators read it (the worker's internal lease reads as queued)."""
    return public_status(status)


def chat_version(chat: Chat) -> str:
    """A short fingerprint that changes whenever the chat's page would: new rows, statuses, state."""
    count, newest = (
        Message.select(fn.COUNT(Message.id), fn.MAX(Message.updated_at))
        .where(Message.chat == chat.chat_id)
        .tuples()
        .first()
    )
    key = profile_key_for(chat)
    profiled = (
        UserProfile.select(UserProfile.updated_at).where(UserProfile.key == key).scalar() if key else None
    )
    raw = "|".join(
        str(v)
        for v in (
            count,
            newest,
            profiled,
            chat.chat_status,
            chat.operator_held_at,
            chat.summary,
            chat.chat_analysis,
            chat.end_timestamp,
        )
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


# The post-chat analysis's own fields, as an operator reads them (custom fields follow by name).
ANALYSIS_LABELS = {
    "chat_summary": "What the chat was about",
    "user_sentiment": "The person's sentiment",
    "chat_successful": "Reached the agent's goal",
}


def readable(value: Any) -> str:
    """A stored JSON value in words: yes/no, "not known" for null, lists joined, objects as `key: value`."""
    if value is None or value == "":
        return "not known"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "; ".join(readable(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return "; ".join(f"{label(k)}: {readable(v)}" for k, v in value.items()) if value else "none"
    return str(value)


def label(name: Any) -> str:
    """A JSON key as a label: `communication_style` -> `Communication style`."""
    text = str(name).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def in_order(keys: Any, first: list[str]) -> list[str]:
    """`keys` with those named in `first` first, in that order, then the rest alphabetically (PostgreSQL's
    jsonb keeps no key order, so this is what makes a page read the same on both backends)."""
    keys = [str(k) for k in keys]
    return [k for k in first if k in keys] + sorted(k for k in keys if k not in first)


def profile_rows(profile: Any) -> list[tuple[str, str]]:
    """The person's profile as (label, words) rows in the profile schema's order, unknown entries left out."""
    if not isinstance(profile, dict):
        return []
    order = in_order(profile, list(PROFILE_SCHEMA["properties"]))
    return [(label(k), readable(profile[k])) for k in order if profile[k] not in (None, "", [], {})]


def analysis_rows(analysis: Any, fields: Any = ()) -> list[tuple[str, str]]:
    """The post-chat analysis as (label, words) rows: its own fields first, then each custom field in
    the order of the agent's `fields` (its analysis_fields)."""
    if not isinstance(analysis, dict):
        return []
    rows = [(ANALYSIS_LABELS[k], readable(analysis.get(k))) for k in ANALYSIS_LABELS if k in analysis]
    custom = analysis.get("custom_analysis_data")
    if isinstance(custom, dict):
        names = [str(f.get("name")) for f in fields or [] if isinstance(f, dict)]
        rows += [(label(k), readable(custom[k])) for k in in_order(custom, names)]
    others = [k for k in analysis if k not in ANALYSIS_LABELS and k != "custom_analysis_data"]
    rows += [(label(k), readable(analysis[k])) for k in sorted(others)]
    return rows


def chat_context(chat: Chat) -> dict:
    """What the chat page and its live part show."""
    messages = transcript(chat)
    rows = Message.select(fn.SUM(Message.prompt_tokens), fn.SUM(Message.completion_tokens)).where(
        Message.chat == chat.chat_id
    )
    prompt_tokens, completion_tokens = rows.tuples().first()
    key = profile_key_for(chat)
    profile = UserProfile.get_or_none(UserProfile.key == key) if key else None
    return {
        "chat": chat,
        "agent_name": agent_names().get(chat.agent_id, chat.agent_id),
        "messages": messages,
        "usage": {"prompt": prompt_tokens or 0, "completion": completion_tokens or 0},
        "profile": profile_rows(profile.profile) if profile else [],
        "analysis": analysis_rows(
            chat.chat_analysis,
            Agent.select(Agent.analysis_fields).where(Agent.agent_id == chat.agent_id).scalar(),
        ),
        "held": chat.operator_held_at is not None,
        "can_take_over": chat.chat_type == ChatType.SMS.value
        and chat.chat_status == ChatStatus.ONGOING.value,
        "version": chat_version(chat),
    }


@bp.get("/chats/<chat_id>")
def chat(chat_id: str):
    """One chat: transcript, usage, summary, profile, analysis; live while open."""
    return render_template("console/chat.html", poll_ms=POLL_MS, **chat_context(chat_or_404(chat_id)))


@bp.get("/chats/<chat_id>/live.json")
def chat_live(chat_id: str):
    """The chat page's changing part, when it changed since `v` (else just the version)."""
    chat = chat_or_404(chat_id)
    version = chat_version(chat)
    if request.args.get("v") == version:
        return jsonify(version=version)
    html = render_template("console/_chat_live.html", **chat_context(chat))
    return jsonify(version=version, html=html)


@bp.post("/chats/<chat_id>/end")
def end_chat(chat_id: str):
    """End an ongoing chat (its post-chat analysis and its chat_ended event are queued)."""
    chat = chat_or_404(chat_id)
    queue = current_app.task_queue  # type: ignore[attr-defined]
    if operator.end_chat_by_operator(chat.chat_id, queue):
        # The agent's webhook hears of it as of any other end (the API's End chat does the same).
        events.emit(queue, current_app.config["SETTINGS"], events.CHAT_ENDED, chat.chat_id)
        flash("The chat is ended.")
    else:
        flash(f"The chat is {chat.chat_status}, not ongoing: nothing to end.")
    return redirect(url_for("console.chat", chat_id=chat.chat_id))


@bp.get("/chats/<chat_id>/media/<int:message_id>/<int:index>")
def chat_media(chat_id: str, message_id: int, index: int):
    """An image of a message, fetched from Twilio (our account's media only) for a signed-in operator."""
    message = Message.get_or_none((Message.id == message_id) & (Message.chat == chat_id))
    items = (message.media or []) if message is not None else []
    if not 0 <= index < len(items) or not isinstance(items[index], dict) or not items[index].get("url"):
        abort(404)
    settings = current_app.config["SETTINGS"]
    try:
        _, data = media.fetch_media(items[index]["url"], media.policy_for(settings))
    except media.MediaError as exc:
        return Response(f"This attachment could not be shown: {exc.reason}.\n", 502, mimetype="text/plain")
    content_type = media.sniff_image_type(data)
    if content_type is None:
        # Only images are shown inline; anything else could be a page that runs in our origin.
        return Response("This attachment is not an image.\n", 415, mimetype="text/plain")
    response = Response(data, mimetype=content_type)
    response.headers["Cache-Control"] = "private, max-age=3600"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'"
    return response


@bp.post("/chats/<chat_id>/takeover")
def take_over(chat_id: str):
    """Pause the agent on this SMS chat: the operator answers by hand."""
    chat = chat_or_404(chat_id)
    try:
        operator.take_over(chat.chat_id)
        flash("You hold this chat: the agent will not answer until you hand it back.")
    except operator.OperatorRefused as exc:
        flash(exc.message)
    return redirect(url_for("console.chat", chat_id=chat.chat_id))


@bp.post("/chats/<chat_id>/handback")
def hand_back(chat_id: str):
    """Let the agent answer this chat again."""
    chat = chat_or_404(chat_id)
    if operator.hand_back(chat.chat_id):
        flash("Handed back: the agent answers the next text.")
    else:
        flash("Nobody held this chat.")
    return redirect(url_for("console.chat", chat_id=chat.chat_id))


@bp.post("/chats/<chat_id>/reply")
def reply(chat_id: str):
    """Send the operator's text to the person, through the agent's send path."""
    chat = chat_or_404(chat_id)
    try:
        operator.send_operator_message(chat.chat_id, request.form.get("text") or "", current_app.task_queue)  # type: ignore[attr-defined]
    except operator.OperatorRefused as exc:
        flash(exc.message)
    return redirect(url_for("console.chat", chat_id=chat.chat_id))
