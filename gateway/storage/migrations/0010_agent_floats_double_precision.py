"""Agent floats as double precision: PostgreSQL's REAL refused values such as 1e-50 (underflow), so the
column now takes every finite number the API accepts, as SQLite's REAL (an 8-byte float) always did."""

from peewee import *


def up(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        migrator.migrate(
            migrator.alter_column_type("agent", "temperature", DoubleField(null=True)),
            migrator.alter_column_type("agent", "retry_delay", DoubleField(default=1.0)),
        )


def down(migrator, db):
    if isinstance(db, PostgresqlDatabase):
        migrator.migrate(
            migrator.alter_column_type("agent", "temperature", FloatField(null=True)),
            migrator.alter_column_type("agent", "retry_delay", FloatField(default=1.0)),
        )
