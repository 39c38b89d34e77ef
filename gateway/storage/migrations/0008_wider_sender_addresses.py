"""Sender and recipient columns hold `whatsapp:+<E.164>` addresses (25 characters), not only numbers.

SQLite does not enforce VARCHAR lengths, so only PostgreSQL's columns change.
"""

from peewee import *

# (table, column, new length)
WIDER = [
    ("chat", "from_number", 32),
    ("chat", "to_number", 32),
    ("chat", "ongoing_pair", 72),
    ("message", "from_number", 32),
    ("message", "to_number", 32),
    ("contact", "our_number", 32),
    ("contact", "phone_number", 32),
]


def up(migrator, db):
    if isinstance(db, SqliteDatabase):
        return
    migrator.migrate(
        *[migrator.alter_column_type(table, column, CharField(max_length=n)) for table, column, n in WIDER]
    )


def down(migrator, db):
    pass  # narrowing could cut recorded addresses
