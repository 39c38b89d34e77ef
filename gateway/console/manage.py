"""The console's settings pages: our numbers (agents, Twilio webhook, Configure on Twilio) and
starting an outbound SMS conversation (the contacts are in gateway/console/contacts.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets

from flask import current_app, flash, redirect, render_template, request, url_for
from peewee import IntegrityError

from gateway.console import bp
from gateway.console.chats import agent_names
from gateway.conversations.agents import outbound_agent_for
from gateway.conversations.outbound import OutboundRefused, OutboundRequest, start_sms_chat
from gateway.errors import GatewayError
from gateway.queue import enqueue_opening, retry_policy
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, IdempotencyKey, PhoneNumber, utcnow
from gateway.twilio.numbers import SMS_PATH, configure_number, list_numbers, numbers_client

log = logging.getLogger(__name__)


def live_agents() -> list[Agent]:
    """Agents that may answer new chats, by name."""
    return list(Agent.select().where(Agent.deleted_at.is_null()).order_by(Agent.name, Agent.agent_id))


def _twilio_numbers(settings) -> tuple[dict[str, object], str | None]:
    """{phone number: NumberInfo} of the Twilio account, and why it could not be read (if so)."""
    if not settings.twilio_configured:
        return {}, "Twilio credentials are not set: the webhook state is unknown."
    try:
        return {n.phone_number: n for n in list_numbers(numbers_client(settings))}, None
    except Exception as exc:  # Twilio down or the credentials refused: show it, never a 500
        log.warning("console: could not list the Twilio numbers: %s", exc)
        return {}, f"Could not ask Twilio about its numbers: {getattr(exc, 'msg', None) or exc}"


@bp.get("/numbers")
def numbers():
    """Our numbers with their agents and whether Twilio's webhook points here."""
    settings = current_app.config["SETTINGS"]
    twilio, problem = _twilio_numbers(settings)
    here = (settings.public_base_url or "").rstrip("/") + SMS_PATH if settings.public_base_url else None
    rows = list(PhoneNumber.select().order_by(PhoneNumber.phone_number))
    known = {row.phone_number for row in rows}
    return render_template(
        "console/numbers.html",
        rows=rows,
        twilio=twilio,
        problem=problem,
        here=here,
        unregistered=[n for n in twilio.values() if n.phone_number not in known],
        agents=live_agents(),
        names=agent_names(),
    )


@bp.post("/numbers/<path:phone_number>/agents")
def number_agents(phone_number: str):
    """Set a number's inbound and outbound agents (empty: the default agent)."""
    row = PhoneNumber.get_or_none(PhoneNumber.phone_number == phone_number)
    if row is None:
        flash(f"{phone_number} is not one of the gateway's numbers.")
        return redirect(url_for("console.numbers"))
    live = {a.agent_id for a in live_agents()}
    changes = {}
    for field in ("inbound_agent", "outbound_agent"):
        value = request.form.get(field) or None
        if value is not None and value not in live:
            flash(f"No agent with id {value!r}.")
            return redirect(url_for("console.numbers"))
        changes[field] = value
    PhoneNumber.update(**changes, updated_at=utcnow()).where(
        PhoneNumber.phone_number == phone_number
    ).execute()
    flash(f"{phone_number}: agents saved.")
    return redirect(url_for("console.numbers"))


@bp.post("/numbers/<path:phone_number>/configure")
def configure(phone_number: str):
    """What `smsgw numbers configure` does: point the number's webhooks here and register it."""
    settings = current_app.config["SETTINGS"]
    if not settings.public_base_url:
        flash("Set PUBLIC_BASE_URL (the https origin Twilio reaches) first: Twilio needs it to call back.")
        return redirect(url_for("console.numbers"))
    try:
        result = configure_number(numbers_client(settings), phone_number, settings.public_base_url)
    except (LookupError, GatewayError) as exc:
        flash(str(exc))
        return redirect(url_for("console.numbers"))
    except Exception as exc:  # Twilio refused or could not be reached
        log.warning("console: configure %s failed: %s", phone_number, exc)
        flash(f"Twilio refused the change: {getattr(exc, 'msg', None) or exc}")
        return redirect(url_for("console.numbers"))
    if result.advice:
        flash(result.advice)
    elif not result.changes:
        flash(f"{phone_number} already points at this gateway; registered.")
    else:
        changed = "; ".join(f"{name}: {old or '(not set)'} → {new}" for name, old, new in result.changes)
        flash(f"{phone_number} updated on Twilio: {changed}.")
    return redirect(url_for("console.numbers"))


@bp.route("/outbound", methods=["GET", "POST"])
def outbound():
    """Make an outbound SMS: start a conversation from one of our numbers (one per form, however
    often it is submitted)."""
    numbers = [n.phone_number for n in PhoneNumber.select().order_by(PhoneNumber.phone_number)]
    error = None
    form = request.form if request.method == "POST" else {}
    if request.method == "POST":
        chat_id, error = _start_outbound(form)
        if chat_id is not None:
            return redirect(url_for("console.chat", chat_id=chat_id))
    return render_template(
        "console/outbound.html",
        numbers=numbers,
        agents=live_agents(),
        form=form,
        error=error,
        form_key=form.get("form_key") or secrets.token_urlsafe(16),
    ), (422 if error else 200)


def _start_outbound(form) -> tuple[str | None, str | None]:
    """(the chat started or already started by this form, None) or (None, the refusal in words)."""
    from gateway.api.schemas import normalize_e164

    key = (form.get("form_key") or "").strip()[:100]
    if not key:
        return None, "This form has no key: reload the page."
    stored_key = f"console-outbound:{key}"
    fields = {
        name: (form.get(name) or "").strip() for name in ("from_number", "to_number", "agent", "message")
    }
    fingerprint = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    replay = _replay(stored_key)
    if replay:
        return replay, None
    from_number, to_number = fields["from_number"], normalize_e164(fields["to_number"])
    if PhoneNumber.get_or_none(PhoneNumber.phone_number == from_number) is None:
        return None, f"{from_number or 'That'} is not one of the gateway's numbers."
    if to_number is None:
        return (
            None,
            f"{fields['to_number'] or 'The To number'} is not a phone number (use +15551234567 form).",
        )
    if to_number == from_number:
        return None, "The To number must differ from ours."
    agent = None
    if fields["agent"]:
        agent = Agent.get_or_none((Agent.agent_id == fields["agent"]) & Agent.deleted_at.is_null())
        if agent is None:
            return None, f"No agent with id {fields['agent']!r}."
    agent = agent or outbound_agent_for(from_number)
    request_ = OutboundRequest(
        agent=agent,
        from_number=from_number,
        to_number=to_number,
        message=fields["message"] or None,
        media_urls=(),
        metadata={"started_from": "console"},
        dynamic_variables={},
    )
    try:
        with database.atomic():
            chat = start_sms_chat(request_)
            IdempotencyKey.create(
                key=stored_key, request_hash=fingerprint, status_code=303, response={"chat_id": chat.chat_id}
            )
    except (OutboundRefused, IntegrityError) as exc:
        # A second click of the same form that lost the race: the first one's chat is the answer.
        replay = _replay(stored_key)
        if replay:
            return replay, None
        if isinstance(exc, IntegrityError):
            raise
        return None, exc.message
    queue = current_app.task_queue  # type: ignore[attr-defined]
    try:
        if queue is None:
            raise RuntimeError("REDIS_URL is not set")
        enqueue_opening(
            queue, chat_id=chat.chat_id, retry=retry_policy(agent.retry_attempts, agent.retry_delay)
        )
    except Exception:
        log.exception("could not enqueue the opening of %s; the sweep will", chat.chat_id)
    flash("Conversation started: the opening text is on its way.")
    return chat.chat_id, None


def _replay(stored_key: str) -> str | None:
    """The chat a form key already started, if it did."""
    row = IdempotencyKey.get_or_none(IdempotencyKey.key == stored_key)
    if row is None:
        return None
    chat_id = (row.response or {}).get("chat_id")
    return chat_id if chat_id and Chat.get_or_none(Chat.chat_id == chat_id) else None
