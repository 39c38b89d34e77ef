"""The schema: agents, phone numbers, contacts, chats, messages, profiles and idempotency keys."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum

from peewee import (
    AutoField,
    BooleanField,
    CharField,
    DateTimeField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    JSONField,
    Model,
    TextField,
)

from gateway.storage.db import database


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo (stored as naive UTC on every backend)."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_id(prefix: str) -> str:
    """A short random public id such as `chat_3f9a...`."""
    return f"{prefix}_{secrets.token_hex(12)}"


class ChatType(StrEnum):
    """How a chat reaches its person."""

    API = "api_chat"
    SMS = "sms_chat"


class Channel(StrEnum):
    """Which messaging channel an SMS-type chat runs on (Twilio delivers both through one webhook)."""

    SMS = "sms"
    WHATSAPP = "whatsapp"


class ChatStatus(StrEnum):
    """Where a chat is in its life."""

    ONGOING = "ongoing"
    ENDED = "ended"
    ERROR = "error"


class Role(StrEnum):
    """Who wrote a message."""

    USER = "user"
    AGENT = "agent"


class MessageStatus(StrEnum):
    """An SMS message's delivery state, as Twilio reports it (plus `received` for inbound)."""

    RECEIVED = "received"
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"  # WhatsApp: the person opened it (only ever after delivered)
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    # Internal: a worker is handing the part to Twilio right now (a lease, see
    # gateway/conversations/delivery.py); the API and the console show it as `queued`.
    SENDING = "sending"


# The statuses the API and the console show (SENDING reads as QUEUED).
PUBLIC_MESSAGE_STATUSES = tuple(s.value for s in MessageStatus if s is not MessageStatus.SENDING)


class ReplyState(StrEnum):
    """Whether an inbound message still needs the agent's answer."""

    PENDING = "pending"  # waiting for the reply job
    ANSWERED = "answered"  # the agent's reply is recorded (its parts carry their own status)
    NONE = "none"  # needs no agent reply (keyword, opted out)
    FAILED = "failed"  # gave up; error_message says why
    RATE_LIMITED = "rate_limited"  # over the agent's replies-per-person cap: no model call
    BUDGET_EXHAUSTED = "budget_exhausted"  # over a daily token budget: no model call


class MessageKind(StrEnum):
    """What a message is to the conversation; only TEXT (and OPERATOR) ever reach the model."""

    TEXT = "text"  # an ordinary text from the person, or the agent's reply
    KEYWORD = "keyword"  # STOP/START/HELP and Twilio's other default keywords
    OPTED_OUT = "opted_out"  # received while the person is opted out of this number
    HELP_ANSWER = "help_answer"  # the gateway's answer to HELP
    NOTICE = "notice"  # a gateway notice (over a cap, and the like), not the agent's words
    OPERATOR = "operator"  # written by a human operator who took the chat over


class BaseModel(Model):
    """Every table lives behind the database proxy."""

    class Meta:
        database = database
        legacy_table_names = False


class Agent(BaseModel):
    """An OpenAI-compatible model with a system prompt and memory settings."""

    agent_id = CharField(primary_key=True, max_length=64, default=lambda: new_id("agent"))
    name = CharField(max_length=200, default="")
    model = CharField(max_length=200, null=True)  # None: OPENAI_MODEL
    system_prompt = TextField(default="")
    temperature = DoubleField(null=True)  # double precision on PostgreSQL too (REAL underflows)
    num_last_messages = IntegerField(default=20)
    full_session_memory = BooleanField(default=True)
    summary_memory = BooleanField(default=False)
    user_analysis_memory = BooleanField(default=False)
    retry_attempts = IntegerField(default=3)
    retry_delay = DoubleField(default=1.0)  # seconds, doubled per attempt with jitter
    max_concurrent_invocations = IntegerField(default=1)
    end_chat_after_silence_ms = IntegerField(default=3_600_000)
    auto_close_message = TextField(null=True)
    help_message = TextField(null=True)
    fallback_message = TextField(null=True)  # sent when the model cannot answer; None: built-in text
    fallback_enabled = BooleanField(default=True)  # False: a model failure sends nothing
    accepts_images = BooleanField(default=False)
    analysis_fields = JSONField(default=list)  # custom post-chat analysis fields
    # Chat event webhooks (gateway/events.py): None takes EVENTS_WEBHOOK_URL / _SECRET; events None:
    # the default set. The secret is write-only over the API.
    webhook_url = TextField(null=True)
    webhook_events = JSONField(null=True)
    webhook_secret = TextField(null=True)
    # Agent tools (gateway/agent/tools.py declares the shape): function tools and the built-ins
    # end_chat and handoff_to_human. None or []: no tools.
    tools = JSONField(null=True)
    # Bounds on one reply: the model's max_tokens, and how many SMS parts it may become.
    max_tokens = IntegerField(default=1024)
    max_reply_parts = IntegerField(default=5)
    # Spend guard; None takes the gateway-wide default from settings.
    replies_per_person_per_hour = IntegerField(null=True)
    replies_per_person_per_day = IntegerField(null=True)
    tokens_per_day = IntegerField(null=True)
    limit_notice_message = TextField(null=True)  # None: built-in text; "": no notice
    # Consent: the hint on the first text we start to a person (None: built-in; "": off), and
    # the hours outbound starts may go out in, in the number's timezone ({"start","end"} "HH:MM").
    opt_out_hint = TextField(null=True)
    sending_hours = JSONField(null=True)
    # {{variables}} of chats that bring none of their own (inbound SMS); a chat's own win.
    default_dynamic_variables = JSONField(null=True, default=dict)
    is_default = BooleanField(default=False, index=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    # Set by DELETE /v1/agents/{id}: ended chats keep pointing at the agent (their history
    # stays readable), but the API no longer lists it and no new chat can use it.
    deleted_at = DateTimeField(null=True)


class PhoneNumber(BaseModel):
    """One of our Twilio numbers and the agents that answer on it."""

    phone_number = CharField(primary_key=True, max_length=20)
    inbound_agent = ForeignKeyField(Agent, null=True, backref="inbound_numbers", on_delete="RESTRICT")
    outbound_agent = ForeignKeyField(Agent, null=True, backref="outbound_numbers", on_delete="RESTRICT")
    twilio_sid = CharField(max_length=64, null=True)
    timezone = CharField(max_length=64, null=True)  # IANA name; None: guessed from the number
    # Sends go through this Messaging Service (MessagingServiceSid instead of From); None: From.
    messaging_service_sid = CharField(max_length=64, null=True)
    # Messages per second this number may send (shared by every worker); None: no pacing.
    max_mps = DoubleField(null=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)


class Contact(BaseModel):
    """A person who texts one of our numbers, with their opt-out state for that number."""

    id = AutoField()
    our_number = CharField(max_length=32)
    phone_number = CharField(max_length=32)
    opted_out = BooleanField(default=False)
    opted_out_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("our_number", "phone_number"), True),)


class Chat(BaseModel):
    """A conversation between an agent and a person, over SMS or the API."""

    chat_id = CharField(primary_key=True, max_length=64, default=lambda: new_id("chat"))
    agent = ForeignKeyField(Agent, backref="chats", on_delete="RESTRICT")
    chat_type = CharField(max_length=16, default=ChatType.API.value)
    chat_status = CharField(max_length=16, default=ChatStatus.ONGOING.value)
    channel = CharField(max_length=16, default=Channel.SMS.value)  # Channel; API chats: sms
    user_id = CharField(max_length=200, null=True)
    # Wide enough for `whatsapp:+<E.164>` addresses (migration 0008).
    from_number = CharField(max_length=32, null=True)  # SMS: our number
    to_number = CharField(max_length=32, null=True)  # SMS: the person's number
    # "our|theirs" while the SMS chat is ongoing, NULL after: the unique index makes the
    # database refuse a second ongoing chat for one number pair, however the race goes.
    ongoing_pair = CharField(max_length=72, null=True, unique=True)
    metadata = JSONField(default=dict)
    dynamic_variables = JSONField(default=dict)
    start_timestamp = DateTimeField(default=utcnow)
    end_timestamp = DateTimeField(null=True)
    end_reason = CharField(max_length=64, null=True)
    last_activity_at = DateTimeField(default=utcnow)
    summary = TextField(null=True)  # rolling summary (summary_memory)
    summary_message_id = IntegerField(null=True)  # last message the summary covers
    chat_analysis = JSONField(null=True)
    # Set while a human operator holds the chat (console or POST /v1/chats/{id}/takeover): the
    # agent does not answer and the silence timer does not end it. NULL: the agent answers.
    operator_held_at = DateTimeField(null=True)

    class Meta:
        # Keyset paging orders by (start_timestamp, chat_id): chat_id breaks ties.
        indexes = (
            (("start_timestamp", "chat_id"), False),
            (("agent", "start_timestamp", "chat_id"), False),
            (("chat_status", "start_timestamp", "chat_id"), False),
            (("user_id", "start_timestamp", "chat_id"), False),
            (("chat_type", "start_timestamp", "chat_id"), False),
            (("channel", "start_timestamp", "chat_id"), False),
            (("chat_status", "last_activity_at"), False),
            # A person's SMS chats (user profile memory, gateway/memory.py).
            (("to_number", "chat_type"), False),
        )


class Message(BaseModel):
    """One message in a chat: an inbound SMS, an outbound SMS part, or an API turn."""

    id = AutoField()
    chat = ForeignKeyField(Chat, backref="messages", on_delete="CASCADE")
    role = CharField(max_length=8)
    kind = CharField(max_length=16, default=MessageKind.TEXT.value)  # MessageKind
    content = TextField(default="")
    truncated = BooleanField(default=False)  # inbound Body longer than Twilio's 1600 characters
    media = JSONField(default=list)  # [{"url", "content_type"}]
    # WhatsApp's extra webhook fields (profile_name, wa_id, button_text, button_payload, latitude,
    # longitude, address, label) on inbound; a template's content_sid/content_variables on outbound.
    details = JSONField(null=True)
    twilio_sid = CharField(max_length=64, null=True, unique=True)
    status = CharField(max_length=16, null=True)  # SMS only
    error_code = CharField(max_length=16, null=True)
    error_message = TextField(null=True)
    from_number = CharField(max_length=32, null=True)
    to_number = CharField(max_length=32, null=True)
    reply_state = CharField(max_length=16, null=True, index=True)  # inbound only
    reply_to = ForeignKeyField("self", null=True, backref="replies", on_delete="SET NULL")
    part_index = IntegerField(null=True)  # outbound SMS: which part of the reply
    # The process handing this part to Twilio now (gateway.processes.owner_token): if it dies
    # mid-send, another process of its machine takes the part over at once.
    claimed_by = CharField(max_length=120, null=True)
    prompt_tokens = IntegerField(null=True)
    completion_tokens = IntegerField(null=True)
    # An agent message: the tool calls the model made on the way to it, with what each answered
    # (gateway/agent/tools.py `run`); on an SMS reply, on its first part.
    tool_calls = JSONField(null=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("chat", "id"), False),)

    @property
    def message_id(self) -> str:
        """The public id."""
        return f"msg_{self.id}"


class UserProfile(BaseModel):
    """What the model has learned about a person across chats (user_analysis_memory)."""

    key = CharField(primary_key=True, max_length=220)  # "phone:+1555..." or "user:<user_id>"
    profile = JSONField(default=dict)
    last_message_id = IntegerField(null=True)  # newest message the profile has read
    updated_at = DateTimeField(default=utcnow)


class IdempotencyKey(BaseModel):
    """The first answer to a request sent with an `Idempotency-Key` header."""

    key = CharField(primary_key=True, max_length=255)
    request_hash = CharField(max_length=64)
    status_code = IntegerField()
    response = JSONField()
    created_at = DateTimeField(default=utcnow)


class EarlyStatus(BaseModel):
    """A status callback for a SID no message has yet: the worker stores the SID a moment later.

    Twilio can call back before the send's HTTP answer reached the worker; the status is kept here
    and applied once the SID is stored (gateway.twilio.statuses.apply_early_statuses).
    """

    twilio_sid = CharField(max_length=64, index=True)
    status = CharField(max_length=16)
    error_code = CharField(max_length=16, null=True)
    error_message = TextField(null=True)
    received_at = DateTimeField(default=utcnow)


ALL_MODELS = [Agent, PhoneNumber, Contact, Chat, Message, UserProfile, IdempotencyKey, EarlyStatus]
