"""Prompt building: system prompt variables, bounded history, turn merging, attachments."""

from __future__ import annotations

import logging
import random

import pytest
from peewee import fn

from gateway.agent.history import in_conversation, recent_messages
from gateway.agent.prompt import build_messages, fill_variables
from gateway.config import Settings
from gateway.storage import db
from gateway.storage.models import Agent, Chat, ChatType, Message, Role

SETTINGS = Settings()


@pytest.fixture
def database(database_url):
    """A freshly upgraded database, connected for the test."""
    db.init_database(database_url, pool_size=2)
    db.upgrade()
    db.database.connect(reuse_if_open=True)
    yield db.database
    db.database.close()


def make_chat(agent: Agent, **kw) -> Chat:
    """An SMS chat with this agent."""
    return Chat.create(
        agent=agent,
        chat_type=ChatType.SMS.value,
        from_number="+15550000001",
        to_number="+15550000002",
        **kw,
    )


def user(chat: Chat, content: str, **kw) -> Message:
    """An inbound text."""
    return Message.create(chat=chat, role=Role.USER.value, content=content, status="received", **kw)


def agent_part(chat: Chat, content: str, reply_to: Message, part_index: int = 0, **kw) -> Message:
    """One outbound SMS part."""
    kw.setdefault("status", "delivered")
    return Message.create(
        chat=chat, role=Role.AGENT.value, content=content, reply_to=reply_to, part_index=part_index, **kw
    )


@pytest.mark.parametrize(
    ("template", "variables", "expected"),
    [
        ("Hi {{name}}!", {"name": "Ana"}, "Hi Ana!"),
        ("Hi {{ name }}, order {{order_id}}", {"name": "Bo", "order_id": 42}, "Hi Bo, order 42"),
        ("Hi {{name}} {{unknown}}", {"name": "Cy"}, "Hi Cy "),
        ("Hi {{name}}!", {"name": None}, "Hi !"),
        ("No vars {here}", {"here": "x"}, "No vars {here}"),
        ("{{a}}{{a}}", {"a": "x"}, "xx"),
        ("", {"a": "x"}, ""),
    ],
)
def test_fill_variables(template, variables, expected):
    assert fill_variables(template, variables) == expected


def test_system_prompt_and_history_in_order(database):
    agent = Agent.create(system_prompt="You help {{name}} at {{shop}}.")
    chat = make_chat(agent, dynamic_variables={"name": "Ana"})
    m1 = user(chat, "hi")
    agent_part(chat, "hello!", m1)
    user(chat, "what time do you open?")
    messages = build_messages(chat, agent, SETTINGS)
    assert messages == [
        {"role": "system", "content": "You help Ana at ."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "what time do you open?"},
    ]


def test_inbound_chats_take_the_agents_default_variables(database):
    """A chat with no variables of its own (inbound SMS) is filled from the agent's defaults;
    a chat's own value wins; a variable nobody set is left out."""
    agent = Agent.create(
        system_prompt="You work at {{shop}} for {{name}}.{{missing}}",
        default_dynamic_variables={"shop": "Acme", "name": "our customers"},
    )
    inbound = make_chat(agent)
    assert build_messages(inbound, agent, SETTINGS)[0]["content"] == "You work at Acme for our customers."
    own = make_chat(agent, dynamic_variables={"name": "Ana"})
    assert build_messages(own, agent, SETTINGS)[0]["content"] == "You work at Acme for Ana."


def test_no_system_message_when_prompt_empty(database):
    agent = Agent.create(system_prompt="  ")
    chat = make_chat(agent)
    user(chat, "hi")
    assert build_messages(chat, agent, SETTINGS) == [{"role": "user", "content": "hi"}]


def test_only_last_n_messages(database):
    agent = Agent.create(system_prompt="S", num_last_messages=3)
    chat = make_chat(agent)
    for i in range(5):
        m = user(chat, f"q{i}")
        agent_part(chat, f"a{i}", m)
    messages = build_messages(chat, agent, SETTINGS)
    assert [m["content"] for m in messages] == ["S", "a3", "q4", "a4"]


def test_split_reply_is_one_assistant_turn_and_burst_is_one_user_turn(database):
    agent = Agent.create(system_prompt="S")
    chat = make_chat(agent)
    q1 = user(chat, "first")
    user(chat, "second")
    q3 = user(chat, "third")
    agent_part(chat, "part one", q3, 0)
    agent_part(chat, "part two", q3, 1)
    agent_part(chat, "closing note", None)  # a separate agent text, e.g. an auto-close message
    user(chat, "thanks")
    assert q1.id < q3.id
    messages = build_messages(chat, agent, SETTINGS)
    assert messages[1:] == [
        {"role": "user", "content": "first\nsecond\nthird"},
        {"role": "assistant", "content": "part one part two\n\nclosing note"},
        {"role": "user", "content": "thanks"},
    ]


def test_without_full_session_memory_only_newest_user_messages(database):
    agent = Agent.create(system_prompt="S", full_session_memory=False)
    chat = make_chat(agent)
    m = user(chat, "old question")
    agent_part(chat, "old answer", m)
    user(chat, "new 1")
    user(chat, "new 2")
    messages = build_messages(chat, agent, SETTINGS)
    assert messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "new 1\nnew 2"},
    ]


def test_upto_message_id_leaves_out_newer_messages(database):
    agent = Agent.create(system_prompt="S")
    chat = make_chat(agent)
    first = user(chat, "one")
    user(chat, "two, arrived while the model was thinking")
    messages = build_messages(chat, agent, SETTINGS, upto_message_id=first.id)
    assert messages[1:] == [{"role": "user", "content": "one"}]


def test_media_is_mentioned(database):
    """Attachments are described by type; their URLs (which need our credentials) stay out."""
    agent = Agent.create(system_prompt="S")
    chat = make_chat(agent)
    user(
        chat,
        "look",
        media=[{"url": "https://api.twilio.com/media/ME1", "content_type": "image/jpeg"}],
    )
    user(chat, "", media=[{"url": "https://x/ME2", "content_type": "audio/amr"}])
    messages = build_messages(chat, agent, SETTINGS)
    assert messages[1]["content"] == "look\n[attachment: image/jpeg]\n[attachment: audio/amr]"


def test_failed_unsent_parts_are_left_out(database):
    agent = Agent.create(system_prompt="S")
    chat = make_chat(agent)
    m = user(chat, "hi")
    agent_part(chat, "never left", m, status="failed")
    agent_part(chat, "sent but undelivered", m, 1, status="failed", twilio_sid="SM" + "1" * 32)
    messages = build_messages(chat, agent, SETTINGS)
    assert [t["content"] for t in messages] == ["S", "hi", "sent but undelivered"]


def test_api_chat_messages_without_status(database):
    agent = Agent.create(system_prompt="S")
    chat = Chat.create(agent=agent)
    Message.create(chat=chat, role="user", content="q")
    Message.create(chat=chat, role="agent", content="a")
    Message.create(chat=chat, role="user", content="q2")
    assert [t["role"] for t in build_messages(chat, agent, SETTINGS)] == [
        "system",
        "user",
        "assistant",
        "user",
    ]


class QueryCounter(logging.Handler):
    """Counts the SQL statements peewee logs."""

    def __init__(self) -> None:
        """Start at zero."""
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        """One more statement."""
        self.count += 1


def count_queries(fn) -> int:
    """How many SQL statements `fn()` runs."""
    logger = logging.getLogger("peewee")
    counter = QueryCounter()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(counter)
    try:
        fn()
    finally:
        logger.removeHandler(counter)
        logger.setLevel(old_level)
    return counter.count


def test_cost_does_not_grow_with_chat_length(database):
    agent = Agent.create(system_prompt="S", num_last_messages=20)
    short_chat = make_chat(agent)
    for i in range(10):
        user(short_chat, f"s{i}")
    long_chat = Chat.create(agent=agent, chat_type=ChatType.SMS.value)
    rows = [{"chat": long_chat.chat_id, "role": "user", "content": f"l{i}"} for i in range(2000)]
    with database.atomic():
        for start in range(0, len(rows), 500):
            Message.insert_many(rows[start : start + 500]).execute()

    short_count = count_queries(lambda: build_messages(short_chat, agent, SETTINGS))
    long_count = count_queries(lambda: build_messages(long_chat, agent, SETTINGS))
    assert short_count == long_count == 1

    messages = build_messages(long_chat, agent, SETTINGS)
    assert messages[1]["content"].split("\n") == [f"l{i}" for i in range(1980, 2000)]


def by_position(chat: Chat, limit: int, upto: int | None = None) -> list[int]:
    """The window `recent_messages` must return, by the plain (whole-chat sort) definition."""
    position = fn.COALESCE(Message.reply_to, Message.id)
    query = Message.select(Message.id).where((Message.chat == chat.chat_id) & in_conversation())
    if upto is not None:
        query = query.where(position <= upto)
    return [row.id for row in query.order_by(position.desc(), Message.id.desc()).limit(limit)][::-1]


@pytest.mark.parametrize("seed", range(6))
def test_window_matches_its_definition_with_replies_far_back(database, seed):
    """Replies sit after the text they answer, even one answering a text from long ago (the rare case
    the index read cannot settle alone), with and without `upto_message_id`."""
    rng = random.Random(seed)
    agent = Agent.create(system_prompt="S")
    chat = make_chat(agent)
    texts: list[Message] = []
    for i in range(120):
        if texts and rng.random() < 0.4:
            # Mostly the newest text; now and then one far back (a reply held up for a long time).
            answered = texts[-1] if rng.random() < 0.8 else rng.choice(texts[: max(1, len(texts) // 4)])
            for part in range(rng.choice((1, 1, 2, 5, 30))):  # a long reply's many parts
                agent_part(chat, f"a{i}.{part}", answered, part)
        else:
            texts.append(user(chat, f"q{i}"))
    for limit in (1, 3, 10, 40, 200):
        for upto in (None, texts[len(texts) // 2].id, texts[-1].id):
            got = [row.id for row in recent_messages(chat, limit, upto_message_id=upto)]
            assert got == by_position(chat, limit, upto), (limit, upto)


def test_the_texts_being_answered_always_reach_the_model(app, settings):
    """A window of 0 (or 1, with a burst of three texts) still carries every text being answered."""
    from gateway.agent.prompt import build_messages
    from gateway.storage.models import Agent, Chat, Message

    for window in (0, 1):
        agent = Agent.create(name=f"w{window}", num_last_messages=window, system_prompt="Be brief.")
        chat = Chat.create(agent=agent, chat_type="sms_chat")
        Message.create(chat=chat, role="user", content="old question")
        Message.create(chat=chat, role="agent", content="old answer")
        for text in ("one", "two", "three"):
            Message.create(chat=chat, role="user", content=text)
        messages = build_messages(chat, agent, settings)
        assert messages[-1] == {"role": "user", "content": "one\ntwo\nthree"}
        assert not any("old" in m["content"] for m in messages[1:])
