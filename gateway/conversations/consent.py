"""A person's consent: opting out and back in, the opt-out hint on a first text, and sending hours.

- Every opt-out and opt-in is recorded here (`set_opted_out`, `set_contact_opt_out`) and read
  here (`has_opted_out`): STOP and START, Twilio's error 21610 on a send or a status callback,
  the contacts API and CLI. Each is one statement, race-safe without a transaction.

- The first text the gateway itself starts to a person from one of our numbers (no agent text
  ever went from that number to them before) ends with the agent's opt-out hint
  (`Agent.opt_out_hint`: None takes DEFAULT_OPT_OUT_HINT, "" turns it off).
- An agent's `sending_hours` ({"start": "HH:MM", "end": "HH:MM"}, an end before the start spans
  midnight) limit when an opening text may go, in the timezone of the number it goes from
  (`PhoneNumber.timezone`, else the one its country code implies, else UTC). Outside them the
  opening waits for the window to open: `next_send_time` says when.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones

from gateway.storage.models import Agent, Chat, Contact, Message, PhoneNumber, Role, utcnow

log = logging.getLogger(__name__)

DEFAULT_OPT_OUT_HINT = "Reply STOP to opt out."
# An SMS (of any number of segments) holds at most this many characters.
SMS_LIMIT = 1600


def opt_out_hint(agent: Agent) -> str | None:
    """The hint the agent's first texts end with, or None when the agent turned it off."""
    if agent.opt_out_hint is None:
        return DEFAULT_OPT_OUT_HINT
    return agent.opt_out_hint.strip() or None


def is_first_text(our_number: str, their_number: str, chat_id: str) -> bool:
    """True when no agent text ever went from our number to theirs outside this chat."""
    earlier = (
        Message.select(Message.id)
        .join(Chat, on=(Message.chat == Chat.chat_id))
        .where(
            (Chat.from_number == our_number)
            & (Chat.to_number == their_number)
            & (Chat.chat_id != chat_id)
            & (Message.role == Role.AGENT.value)
        )
    )
    return not earlier.exists()


def with_hint(parts: list[str], hint: str | None) -> list[str]:
    """The parts with the hint after the last one (as its own part when it would not fit)."""
    if not hint:
        return parts
    if not parts or not parts[-1]:
        return [*parts[:-1], hint] if parts else [hint]
    if len(parts[-1]) + 1 + len(hint) <= SMS_LIMIT:
        return [*parts[:-1], f"{parts[-1]}\n{hint}"]
    return [*parts, hint]


def _clock(value: object) -> time | None:
    """An "HH:MM" string as a time, or None."""
    try:
        hours, minutes = str(value).split(":")
        return time(int(hours), int(minutes))
    except (ValueError, TypeError):
        return None


def sending_window(agent: Agent) -> tuple[time, time] | None:
    """The agent's (start, end) sending hours, or None when it may send at any time."""
    hours = agent.sending_hours
    if not isinstance(hours, dict):
        return None
    start, end = _clock(hours.get("start")), _clock(hours.get("end"))
    if start is None or end is None or start == end:
        if hours:
            log.warning(
                "agent %s: sending_hours %r are not two HH:MM times; not limiting", agent.agent_id, hours
            )
        return None
    return start, end


def number_timezone(our_number: str) -> ZoneInfo:
    """The timezone of one of our numbers: its own setting, else its country's, else UTC."""
    name = PhoneNumber.select(PhoneNumber.timezone).where(PhoneNumber.phone_number == our_number).scalar()
    if not name:
        try:
            zones = phone_timezones.time_zones_for_number(phonenumbers.parse(our_number, None))
        except phonenumbers.NumberParseException:
            zones = ()
        name = next((zone for zone in zones if zone != "Etc/Unknown"), "UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("number %s: unknown timezone %r; using UTC", our_number, name)
        return ZoneInfo("UTC")


def _inside(moment: time, start: time, end: time) -> bool:
    """True when `moment` is in [start, end), a window that may span midnight."""
    return start <= moment < end if start < end else (moment >= start or moment < end)


def next_send_time(agent: Agent, our_number: str, now: datetime | None = None) -> datetime | None:
    """None when an opening text may go now; else when (naive UTC) the agent's sending hours open."""
    window = sending_window(agent)
    if window is None:
        return None
    start, end = window
    now = now or utcnow()
    zone = number_timezone(our_number)
    local = now.replace(tzinfo=UTC).astimezone(zone)
    if _inside(local.time(), start, end):
        return None
    opens = datetime.combine(local.date(), start, tzinfo=zone)
    if opens <= local:
        opens = datetime.combine(local.date() + timedelta(days=1), start, tzinfo=zone)
    return opens.astimezone(UTC).replace(tzinfo=None)


def has_opted_out(our_number: str, their_number: str) -> bool:
    """True when the person opted out of texts from our number (no contact row: not opted out)."""
    flag = (
        Contact.select(Contact.opted_out)
        .where((Contact.our_number == our_number) & (Contact.phone_number == their_number))
        .scalar()
    )
    return bool(flag)


def set_contact_opt_out(contact_id: int, opted_out: bool, now: datetime | None = None) -> None:
    """Opt a known contact out (True) or back in (False)."""
    Contact.update(
        opted_out=opted_out,
        opted_out_at=(now or utcnow()) if opted_out else None,
    ).where(Contact.id == contact_id).execute()


def set_opted_out(our_number: str, their_number: str, opted_out: bool = True) -> None:
    """Opt a person out of (or back into) texts from our number, creating the contact if needed.

    One upsert statement, so it is race-safe without a transaction; an opt-out already recorded
    keeps its original time.
    """
    stamp = utcnow() if opted_out else None
    (
        Contact.insert(
            our_number=our_number,
            phone_number=their_number,
            opted_out=opted_out,
            opted_out_at=stamp,
        )
        .on_conflict(
            conflict_target=[Contact.our_number, Contact.phone_number],
            update={Contact.opted_out: opted_out, Contact.opted_out_at: stamp},
            where=(Contact.opted_out != opted_out),
        )
        .execute()
    )
