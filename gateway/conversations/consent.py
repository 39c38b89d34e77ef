"""What a text the gateway starts must respect: the opt-out hint on a first text, and sending hours.

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

from gateway.storage.models import Agent, Chat, Message, PhoneNumber, Role, utcnow

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
