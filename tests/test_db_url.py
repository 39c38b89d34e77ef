"""DATABASE_URL: PostgreSQL URLs go through playhouse.db_url, options and encoded passwords intact."""

from __future__ import annotations

import os
import uuid

import pytest
from playhouse.pool import PooledPostgresqlDatabase

from gateway.storage import db


def test_encoded_password_and_options_reach_the_connect_parameters():
    """`p%40ss` arrives as `p@ss`; query options are passed to the driver; the pool is bounded."""
    database = db.open_database("postgresql://smsgw:p%40ss@db.example:6432/gw?sslmode=require", pool_size=7)
    assert isinstance(database, PooledPostgresqlDatabase)
    assert database.database == "gw"
    assert database.connect_params["password"] == "p@ss"
    assert database.connect_params["user"] == "smsgw"
    assert (database.connect_params["host"], database.connect_params["port"]) == ("db.example", 6432)
    assert database.connect_params["sslmode"] == "require"
    assert database._max_connections == 7


def test_pool_options_in_the_url_win_over_the_defaults():
    """An operator can size the pool in the URL itself."""
    database = db.open_database("postgres://u@h/gw?max_connections=3", pool_size=20)
    assert database._max_connections == 3
    assert "max_connections" not in database.connect_params


@pytest.fixture
def postgres_schema(postgres_url):
    """A fresh schema in this session's PostgreSQL database, dropped afterwards."""
    import psycopg2

    name = f"gw_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(postgres_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{name}"')
    yield conn, name
    with conn.cursor() as cur:
        cur.execute(f'DROP SCHEMA "{name}" CASCADE')
    conn.close()


# Like the PostgreSQL half of every database test, this one exists when TEST_DATABASE_URL is set.
if os.environ.get("TEST_DATABASE_URL"):

    def test_url_options_reach_the_server(postgres_url, postgres_schema):
        """`?options=-csearch_path%3D<schema>` puts the gateway's tables in that schema, not public."""
        conn, schema = postgres_schema
        try:
            db.init_database(f"{postgres_url}?options=-csearch_path%3D{schema}", pool_size=2)
            db.upgrade()
            with db.database.connection_context():
                assert db.database.execute_sql("SHOW search_path").fetchone()[0] == schema
        finally:
            db.database.close_all()
        with conn.cursor() as cur:
            cur.execute("SELECT schemaname, tablename FROM pg_tables WHERE tablename = 'message'")
            where = {row[0] for row in cur.fetchall()}
        assert schema in where
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
            tables = {row[0] for row in cur.fetchall()}
        assert {"agent", "chat", "message"} <= tables
