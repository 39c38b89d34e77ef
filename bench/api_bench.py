"""The chat API's two costs that grow: listing chats at depth, and a completion's own overhead.

    .venv/bin/python bench/api_bench.py
    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/smsgw_bench .venv/bin/python bench/api_bench.py

SQLite always; PostgreSQL too when BENCH_DATABASE_URL is set (that database is EMPTIED: every table
in its public schema is dropped). Prints a table and writes bench/results/api.json.

1. List chats. A database of BENCH_CHATS (default 100,000) chats, bulk-inserted: 5 agents, 2,000
   users, 20% ongoing, 10% SMS, start times spread over 30 days with ties. `GET /v1/chats` through
   the app (Flask test client: routing, auth, the query, JSON) for the first page and for a deep
   page (about half-way, reached by its `pagination_key`), with and without filters. Baselines,
   measured in the same run on the same table: the same deep page as `LIMIT 50 OFFSET n` (what
   paging by offset would cost), a bare `SELECT * FROM chat LIMIT 50` (the floor of any query that
   returns 50 rows), and the keyset query alone without the app around it.
2. Completion overhead. `POST /v1/chats/{id}/completions` against the loopback FakeModel at zero
   latency (tests/fakes), next to the bare round trip of the same openai client to the same fake:
   the difference is what the gateway adds (slot on Redis, two short transactions, the prompt).

Everything listens on and talks to 127.0.0.1 only; it finishes in well under two minutes.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import _harness as h

from gateway import create_app
from gateway.config import Settings
from gateway.storage import db

N_CHATS = int(os.environ.get("BENCH_CHATS", "100000"))
PAGE = 50
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "200"))  # timed calls per figure
OFFSET_ROUNDS = 40  # OFFSET at depth is slow on purpose; fewer calls keep the run short
COMPLETIONS = int(os.environ.get("BENCH_COMPLETIONS", "300"))
API_KEY = "bench-api-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
AGENTS = [f"agent_bench{i}" for i in range(5)]
USERS = 2000
BATCH = 2000  # rows per INSERT (SQLite allows 32,766 bound values per statement)


def reset_postgres(url: str) -> None:
    """Empty the benchmark's PostgreSQL database."""
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    conn.close()


def timed(fn: Callable[[], Any], rounds: int, warmup: int = 5) -> dict[str, Any]:
    """p50/p99 (ms) of `rounds` calls of `fn`, after a few untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return h.summarize_ms(samples)


CHAT_COLUMNS = (
    "chat_id",
    "agent_id",
    "chat_type",
    "channel",
    "chat_status",
    "user_id",
    "metadata",
    "dynamic_variables",
    "start_timestamp",
    "last_activity_at",
    "end_timestamp",
    "end_reason",
)


def chat_rows(n: int, now: datetime):
    """`n` chat rows as tuples in CHAT_COLUMNS order."""
    base = now - timedelta(days=30)
    step = (30 * 24 * 3600) / n
    for i in range(n):
        # Every 10th chat shares its start time with the one before: ties are real.
        stamp = base + timedelta(seconds=step * (i - (i % 10 == 1)))
        ongoing = i % 5 == 0
        yield (
            f"chat_{i:08d}{(i * 2654435761) % 10**8:08d}",
            AGENTS[i % len(AGENTS)],
            "sms_chat" if i % 10 == 3 else "api_chat",
            "sms",  # the column's default: API chats and SMS chats alike
            "ongoing" if ongoing else "ended",
            f"user_{(i * 7919) % USERS}",
            json.dumps({"n": i}),
            "{}",
            stamp,
            stamp,
            None if ongoing else stamp + timedelta(minutes=5),
            None if ongoing else "silence",
        )


def build_chats(n: int) -> None:
    """Insert `n` chats in bulk, straight through the driver (executemany / execute_values)."""
    from gateway.storage.models import Agent, utcnow

    now = utcnow()
    Agent.insert_many(
        [{"agent_id": a, "name": a, "created_at": now, "updated_at": now} for a in AGENTS]
    ).execute()
    columns = ", ".join(CHAT_COLUMNS)
    with db.database.atomic():
        cursor = db.database.cursor()
        if db.is_postgres():
            from psycopg2.extras import execute_values

            execute_values(
                cursor, f"INSERT INTO chat ({columns}) VALUES %s", chat_rows(n, now), page_size=5000
            )
        else:
            marks = ", ".join("?" for _ in CHAT_COLUMNS)
            cursor.executemany(f"INSERT INTO chat ({columns}) VALUES ({marks})", chat_rows(n, now))
    # Fresh statistics, as a database that has lived a while has: the planner picks by them.
    db.database.execute_sql("ANALYZE chat")


def list_figures(client) -> dict[str, Any]:
    """GET /v1/chats first and deep pages, with filters, and the baselines beside them."""
    from gateway.api.paging import before_cursor, encode_cursor
    from gateway.storage.models import Chat

    order = (Chat.start_timestamp.desc(), Chat.chat_id.desc())
    figures: dict[str, Any] = {}
    # (label, query-string filters, the same filter as a peewee expression)
    filters = [
        ("no filter", {}, True),
        ("agent_id", {"agent_id": AGENTS[2]}, Chat.agent == AGENTS[2]),
        ("chat_status=ongoing", {"chat_status": "ongoing"}, Chat.chat_status == "ongoing"),
        ("user_id", {"user_id": "user_7"}, Chat.user_id == "user_7"),
    ]

    def get(params: dict[str, Any]) -> None:
        response = client.get("/v1/chats", query_string=params, headers=AUTH)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert len(response.json["items"]) == PAGE

    for label, params, where in filters:
        total = Chat.select().where(where).count()
        depth = max(0, min(total // 2, total - PAGE - 1))
        pivot = Chat.select().where(where).order_by(*order).offset(depth - 1).first() if depth else None
        figures[f"first page, {label}"] = timed(lambda p=params: get({**p, "limit": PAGE}), ROUNDS)
        if pivot is None:
            continue
        key = encode_cursor(pivot)
        figures[f"deep page ({depth:,} in), {label}"] = timed(
            lambda p=params, k=key: get({**p, "limit": PAGE, "pagination_key": k}), ROUNDS
        )
        if label == "no filter":
            keyset = (
                Chat.select()
                .where(before_cursor(pivot.start_timestamp, pivot.chat_id))
                .order_by(*order)
                .limit(PAGE)
            )
            offset = Chat.select().order_by(*order).limit(PAGE).offset(depth)
            assert [c.chat_id for c in keyset] == [c.chat_id for c in offset]  # same rows, both ways
            figures[f"baseline: same deep page by OFFSET {depth:,}"] = timed(
                lambda q=offset: list(q.tuples()), OFFSET_ROUNDS, warmup=2
            )
            figures["baseline: keyset SQL alone (no app), same page"] = timed(
                lambda q=keyset: list(q.tuples()), ROUNDS
            )
            figures["baseline: bare SELECT * FROM chat LIMIT 50"] = timed(
                lambda: list(Chat.select().limit(PAGE).tuples()), ROUNDS
            )
    return figures


def completion_figures(client, settings: Settings, fake) -> dict[str, Any]:
    """A completion through the API next to the bare model round trip, the model answering at once.

    The bare round trip sends the very prompt the gateway sent last (system prompt and 20 turns of
    history), so the difference is the gateway's own work, not the openai client's on a bigger body.
    """
    from gateway.agent import llm

    model = llm.model_client(settings)

    state = {"chat": None, "turns": 0}

    def through_api() -> None:
        if state["chat"] is None or state["turns"] >= 100:  # a fresh chat now and then
            created = client.post("/v1/chats", json={"agent_id": AGENTS[0]}, headers=AUTH)
            state["chat"], state["turns"] = created.json["chat_id"], 0
        response = client.post(
            f"/v1/chats/{state['chat']}/completions", json={"content": "hello there"}, headers=AUTH
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        state["turns"] += 1

    for _ in range(25):  # a chat with a full history window
        through_api()
    messages = fake.requests[-1]["messages"]

    def bare() -> None:
        model.chat.completions.create(model=settings.openai_model, messages=messages)

    api = timed(through_api, COMPLETIONS, warmup=0)
    return {
        f"bare model round trip (openai client -> fake), {len(messages)}-message prompt": timed(
            bare, COMPLETIONS, warmup=10
        ),
        "POST /v1/chats/{id}/completions": api,
    }


def run_backend(backend: str, url: str, redis_url: str, fake) -> dict[str, Any]:
    """Build the database, then measure listing and completions on it."""
    settings = Settings(
        database_url=url,
        redis_url=redis_url,
        openai_api_key="sk-bench",
        openai_base_url=fake.url + "/v1",
        openai_model="fake-model",
        gateway_api_key=API_KEY,
        queue_prefix=f"bench-api-{backend}",
        instance_path=os.environ.get("TMPDIR", "/tmp"),
    )
    app = create_app({"SETTINGS": settings})
    db.upgrade()
    client = app.test_client()
    print(f"[{backend}] inserting {N_CHATS:,} chats...", file=sys.stderr, flush=True)
    build_s = time.perf_counter()
    build_chats(N_CHATS)
    from gateway.storage.models import Chat

    assert Chat.select().count() == N_CHATS
    build_s = time.perf_counter() - build_s
    print(f"[{backend}] built in {build_s:.1f}s; measuring", file=sys.stderr, flush=True)
    result = {"chats": N_CHATS, "build_s": round(build_s, 1)}
    result["list"] = list_figures(client)
    result["completion"] = completion_figures(client, settings, fake)
    bare, api = (f["p50_ms"] for f in result["completion"].values())
    result["completion_overhead_p50_ms"] = round(api - bare, 2)
    db.database.close()
    return result


def print_table(results: dict[str, Any]) -> None:
    """The figures, one block per backend."""
    for backend, r in results["backends"].items():
        print(f"\n{backend}: {r['chats']:,} chats (bulk insert {r['build_s']} s)")
        rows = [("GET /v1/chats (limit 50)", "p50", "p99")]
        rows += [(name, h.format_ms(f["p50_ms"]), h.format_ms(f["p99_ms"])) for name, f in r["list"].items()]
        rows += [("", "", ""), ("completion (model answers at once)", "p50", "p99")]
        rows += [
            (name, h.format_ms(f["p50_ms"]), h.format_ms(f["p99_ms"])) for name, f in r["completion"].items()
        ]
        rows += [
            (
                "gateway overhead per completion (p50 difference)",
                h.format_ms(r["completion_overhead_p50_ms"]),
                "",
            )
        ]
        print(h.table(rows, (52, 10, 10)))


def main() -> int:
    """Measure on SQLite (and PostgreSQL when BENCH_DATABASE_URL is set), print, write JSON."""
    from tests.fakes import FakeModel

    started = time.monotonic()
    results: dict[str, Any] = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "backends": {},
    }
    backends = [("sqlite", None)]
    if os.environ.get("BENCH_DATABASE_URL"):
        backends.append(("postgresql", os.environ["BENCH_DATABASE_URL"]))
    failed = False
    try:
        with h.Bench("api-bench") as bench:
            redis_url = bench.start_redis()
            fake = FakeModel().start()
            try:
                for backend, url in backends:
                    if url is None:
                        url = f"sqlite:///{bench.workdir / 'api.sqlite3'}"
                    else:
                        reset_postgres(url)
                    results["backends"][backend] = run_backend(backend, url, redis_url, fake)
            finally:
                fake.stop()
    except Exception as exc:  # report what was measured, then fail
        traceback.print_exc()
        results["error"] = f"{type(exc).__name__}: {exc}"
        failed = True
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(results)
    print(f"\n(elapsed {results['elapsed_s']} s)")
    h.RESULTS_DIR.mkdir(exist_ok=True)
    (h.RESULTS_DIR / "api.json").write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
