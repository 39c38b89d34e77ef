"""Reply preparation time vs chat length: database reads plus prompt building, the model excluded.

Run: .venv/bin/python bench/reply_prep_bench.py [--runs 200] [--sizes 10,1000,10000]
     BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/reply_prep_bench adds a PostgreSQL column
     (that scratch database is created if missing and emptied first: DROP SCHEMA public CASCADE).

What one run does is what the reply job (gateway/replies.py, answer_message phase 1) does before
it calls the model, on a chat of N messages with every memory setting on (full_session_memory,
num_last_messages=20, summary_memory with a stored summary, user_analysis_memory with a stored
profile): open a connection, read the message, its chat and agent, the pending messages up to it,
the opt-out flag, the stored-reply check, then gateway.prompt.build_messages (the agent's prompt,
the profile section, the summary section, the bounded history), close the connection.

All chats share one database (so the short chat is measured next to the long ones), messages are
bulk-inserted in batches inside one transaction (then ANALYZE on PostgreSQL, as autovacuum would);
the chat lengths are measured interleaved, in a new order each round, so machine noise falls on
each alike. Prints p50/p99 per chat length side by side;
flat numbers across lengths mean the cost does not grow with the chat.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.agent.memory import PROFILE_HEADING, SUMMARY_HEADING  # noqa: E402
from gateway.agent.prompt import build_messages  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.storage import db  # noqa: E402
from gateway.storage.db import database  # noqa: E402
from gateway.storage.models import (  # noqa: E402
    Agent,
    Chat,
    ChatType,
    Contact,
    Message,
    ReplyState,
    Role,
    UserProfile,
    utcnow,
)

OUR = "+15005550006"
BATCH = 1000
WARMUP = 20  # rounds not measured: caches, the pool
PROFILE = {
    "name": "Zanzibar",
    "preferences": ["short answers", "texts in the evening", "vegetarian"],
    "goals": ["book a table for four", "move the dentist appointment"],
    "communication_style": "casual, writes in English, uses emoji",
    "facts": ["has a dog called Biscuit", "lives near the harbour", "works night shifts"],
}
SUMMARY = (
    "The person, Zanzibar, asked to book a table for four on Friday at 7pm and to move a dentist "
    "appointment. The assistant offered 6:30pm or 8pm; the person chose 8pm and asked about parking. "
) * 3


def their_number(size: int) -> str:
    """A distinct person per chat length."""
    return f"+1415555{size % 10000:04d}"


def fill(sizes: list[int]) -> dict[int, int]:
    """One chat per size (N messages, the last a pending text) with all memory on; {size: pending id}."""
    agent = Agent.create(
        name="bench",
        system_prompt="You are {{business}}'s assistant. Be brief.",
        num_last_messages=20,
        full_session_memory=True,
        summary_memory=True,
        user_analysis_memory=True,
    )
    chats = {}
    for size in sizes:
        theirs = their_number(size)
        chat = Chat.create(
            agent=agent,
            chat_type=ChatType.SMS.value,
            from_number=OUR,
            to_number=theirs,
            ongoing_pair=f"{OUR}|{theirs}",
            dynamic_variables={"business": "Chez Zed"},
            summary=SUMMARY,
        )
        UserProfile.create(key=f"phone:{theirs}", profile=PROFILE)
        now = utcnow()
        with database.atomic():
            for start in range(0, size - 1, BATCH):
                rows = []
                for i in range(start, min(start + BATCH, size - 1)):
                    user = i % 2 == 0
                    rows.append(
                        {
                            "chat": chat.chat_id,
                            "role": (Role.USER if user else Role.AGENT).value,
                            "content": f"message {i}: can you tell me when the store opens tomorrow?",
                            "status": "received" if user else "delivered",
                            "reply_state": "answered" if user else None,
                            "from_number": theirs if user else OUR,
                            "to_number": OUR if user else theirs,
                            "part_index": None if user else 0,
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                Message.insert_many(rows).execute()
            pending = Message.create(
                chat=chat,
                role=Role.USER.value,
                content="And is there parking?",
                status="received",
                reply_state="pending",
                from_number=theirs,
                to_number=OUR,
            )
        last = Message.select(Message.id).where(Message.chat == chat).order_by(Message.id.desc()).first()
        Chat.update(summary_message_id=last.id - 25).where(Chat.chat_id == chat.chat_id).execute()
        chats[size] = pending.id
    return chats


def prepare(settings: Settings, message_id: int) -> list[dict]:
    """What the reply job reads before the model call (gateway/replies.py answer_message, phase 1).

    The same queries, spelled out here so the benchmark does not lean on the reply module's
    private helpers: the message, chat and agent; the chat's pending texts; the opt-out flag; the
    check for a stored-but-unsent reply; then the prompt.
    """
    with database.connection_context():
        message = Message.get_or_none(Message.id == message_id)
        chat = Chat.get_by_id(message.chat_id)
        agent = Agent.get_by_id(chat.agent_id)
        pending_query = Message.select(Message.id).where(
            (Message.chat == chat.chat_id) & (Message.reply_state == ReplyState.PENDING.value)
        )
        pending = [row.id for row in pending_query.order_by(Message.id).limit(100)]
        Contact.select(Contact.opted_out).where(
            (Contact.our_number == chat.from_number) & (Contact.phone_number == chat.to_number)
        ).scalar()
        Message.select(Message.reply_to).where(
            (Message.role == Role.AGENT.value) & Message.reply_to.in_(pending_query)
        ).order_by(Message.reply_to.desc()).first()
        return build_messages(chat, agent, settings, upto_message_id=max(pending, default=message_id))


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def measure(url: str, sizes: list[int], runs: int) -> dict[int, tuple[float, float, int, float]]:
    """{size: (p50 ms, p99 ms, prompt messages, fill seconds)} on the database at `url`."""
    db.init_database(url, pool_size=4)
    db.upgrade()
    settings = Settings(database_url=url)
    started = time.perf_counter()
    with database.connection_context():
        chats = fill(sizes)
        if db.is_postgres():
            # What autovacuum does soon after a bulk load; without statistics the planner
            # guesses a few rows per chat and scans a 10,000-message chat's index entries.
            database.execute_sql("ANALYZE")
    filled = time.perf_counter() - started
    prompts = {}
    for size in sizes:
        prompt = prepare(settings, chats[size])
        assert SUMMARY_HEADING in prompt[0]["content"], "summary section missing"
        assert PROFILE_HEADING in prompt[0]["content"], "profile section missing"
        prompts[size] = len(prompt)
    times: dict[int, list[float]] = {size: [] for size in sizes}
    order = list(sizes)
    for run in range(WARMUP + runs):
        # Interleaved, in a new order each round: machine noise falls on every length alike.
        random.shuffle(order)
        for size in order:
            t0 = time.perf_counter()
            prepare(settings, chats[size])
            if run >= WARMUP:
                times[size].append((time.perf_counter() - t0) * 1000)
    return {size: (percentile(t, 50), percentile(t, 99), prompts[size], filled) for size, t in times.items()}


def reset_postgres(url: str) -> None:
    """Empty the benchmark's PostgreSQL database (created first when it does not exist)."""
    from urllib.parse import urlparse, urlunparse

    import psycopg2

    try:
        conn = psycopg2.connect(url)
    except psycopg2.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
        name = urlparse(url).path.lstrip("/")
        admin = psycopg2.connect(urlunparse(urlparse(url)._replace(path="/postgres")))
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()
        conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    conn.close()


def main() -> None:
    """Measure on SQLite (and PostgreSQL when BENCH_DATABASE_URL is set), print side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--sizes", default="10,1000,10000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    columns: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        columns["SQLite"] = measure(f"sqlite:///{tmp}/bench.sqlite3", sizes, args.runs)
        database.close()
    pg = os.environ.get("BENCH_DATABASE_URL")
    if pg:
        reset_postgres(pg)
        columns["PostgreSQL"] = measure(pg, sizes, args.runs)
        database.close()

    print(f"Reply preparation (DB reads + prompt, model excluded), {args.runs} runs per chat length")
    print("all memory on: num_last_messages=20, summary_memory, user_analysis_memory\n")
    header = f"{'messages in chat':>16} | {'prompt msgs':>11}"
    for name in columns:
        header += f" | {name + ' p50 ms':>16} | {name + ' p99 ms':>16}"
    print(header)
    print("-" * len(header))
    for size in sizes:
        line = f"{size:>16,} | {next(iter(columns.values()))[size][2]:>11}"
        for result in columns.values():
            p50, p99, _, _ = result[size]
            line += f" | {p50:>16.2f} | {p99:>16.2f}"
        print(line)
    for name, result in columns.items():
        print(f"\n{name}: filled {sum(sizes):,} messages in {next(iter(result.values()))[3]:.1f}s")


if __name__ == "__main__":
    main()
