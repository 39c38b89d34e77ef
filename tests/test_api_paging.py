"""Keyset paging through /v1/chats: complete, stable while chats are created, and index-backed."""

from __future__ import annotations

from datetime import timedelta

from gateway.storage.db import database, is_postgres
from gateway.storage.models import Chat, ChatStatus, utcnow
from tests.conftest import GATEWAY_API_KEY

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}


def page(client, **params):
    """One page of GET /v1/chats."""
    response = client.get("/v1/chats", query_string=params, headers=AUTH)
    assert response.status_code == 200, response.json
    return response.json


def walk(client, between_pages=None, **params) -> list[str]:
    """Every chat id, page by page, calling `between_pages()` after each page."""
    seen: list[str] = []
    key = None
    while True:
        query = dict(params)
        if key:
            query["pagination_key"] = key
        body = page(client, **query)
        seen.extend(item["chat_id"] for item in body["items"])
        if not body["has_more"]:
            assert body["pagination_key"] is None
            return seen
        key = body["pagination_key"]
        assert key
        if between_pages:
            between_pages()


def seed(count: int, *, same_time: bool = False, **fields) -> list[str]:
    """Insert `count` chats, newest last; many share one timestamp when `same_time`."""
    base = utcnow() - timedelta(hours=1)
    rows = []
    for i in range(count):
        stamp = base if same_time else base + timedelta(milliseconds=i)
        rows.append(
            {
                "chat_id": f"chat_seed{i:05d}",
                "agent": "agent_default",
                "start_timestamp": stamp,
                "last_activity_at": stamp,
                **fields,
            }
        )
    Chat.insert_many(rows).execute()
    return [r["chat_id"] for r in rows]


def expected_order(ids: list[str]) -> list[str]:
    """Newest first, ties broken by chat_id descending."""
    chats = Chat.select().where(Chat.chat_id.in_(ids))
    return [c.chat_id for c in sorted(chats, key=lambda c: (c.start_timestamp, c.chat_id), reverse=True)]


def test_pages_cover_every_chat_once(client):
    client.get("/v1/agents", headers=AUTH)  # the default agent exists
    ids = seed(57)
    seen = walk(client, limit=10)
    assert seen == expected_order(ids)
    assert len(seen) == len(set(seen)) == 57


def test_ties_on_start_timestamp_are_broken_by_chat_id(client):
    client.get("/v1/agents", headers=AUTH)
    ids = seed(25, same_time=True)
    assert walk(client, limit=4) == sorted(ids, reverse=True)


def test_chats_created_between_pages_neither_shift_nor_repeat(client):
    initial = [client.post("/v1/chats", json={"agent_id": "agent_default"}, headers=AUTH).json["chat_id"]]
    client.get("/v1/agents", headers=AUTH)
    initial += seed(30)
    created: list[str] = []

    def create_more():
        for _ in range(3):
            created.append(
                client.post("/v1/chats", json={"agent_id": "agent_default"}, headers=AUTH).json["chat_id"]
            )

    seen = walk(client, between_pages=create_more, limit=7)
    assert sorted(seen) == sorted(initial)  # nothing skipped, nothing twice, no newcomer mid-walk
    assert len(seen) == len(set(seen))
    assert created  # and the newcomers are at the top of a fresh first page
    assert [c["chat_id"] for c in page(client, limit=len(created))["items"]] == list(reversed(created))


def test_filters_apply_on_every_page(client):
    client.get("/v1/agents", headers=AUTH)
    ended = seed(20, chat_status=ChatStatus.ENDED.value, user_id="u")
    ongoing = [
        client.post("/v1/chats", json={"agent_id": "agent_default", "user_id": "u"}, headers=AUTH).json[
            "chat_id"
        ]
        for _ in range(5)
    ]
    assert walk(client, limit=3, chat_status="ended", user_id="u") == expected_order(ended)
    assert walk(client, limit=2, chat_status="ongoing") == expected_order(ongoing)


def test_limit_bounds_and_default(client):
    client.get("/v1/agents", headers=AUTH)
    seed(60)
    body = page(client)
    assert len(body["items"]) == 50 and body["has_more"] is True
    assert len(page(client, limit=1000)["items"]) == 60
    body = page(client, limit=60)
    assert body["has_more"] is False and body["pagination_key"] is None


def test_deep_pages_use_the_keyset_index(client):
    """The planner answers a page from the (filter, start_timestamp, chat_id) index, without a sort."""
    from gateway.api.paging import before_cursor

    client.get("/v1/agents", headers=AUTH)
    seed(200)
    Chat.insert_many(
        [{"chat_id": f"chat_x{i:04d}", "agent": "agent_default", "user_id": f"u{i % 7}"} for i in range(200)]
    ).execute()
    last = Chat.select().order_by(Chat.start_timestamp.desc()).offset(100).first()
    for where in [True, Chat.agent == "agent_default", Chat.user_id == "u3", Chat.chat_status == "ongoing"]:
        query = (
            Chat.select()
            .where(where)
            .where(before_cursor(last.start_timestamp, last.chat_id))
            .order_by(Chat.start_timestamp.desc(), Chat.chat_id.desc())
            .limit(51)
        )
        sql, params = query.sql()
        if is_postgres():
            # A tiny table would otherwise be read whole and sorted: ask for the plan a big one gets.
            database.execute_sql("ANALYZE chat")
            database.execute_sql("SET enable_seqscan = off")
            database.execute_sql("SET enable_bitmapscan = off")
            plan = "\n".join(r[0] for r in database.execute_sql("EXPLAIN " + sql, params))
            database.execute_sql("RESET enable_seqscan")
            database.execute_sql("RESET enable_bitmapscan")
            assert "Index" in plan and "Sort" not in plan, plan
        else:
            plan = "\n".join(str(r[-1]) for r in database.execute_sql("EXPLAIN QUERY PLAN " + sql, params))
            assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan
