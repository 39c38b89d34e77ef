"""An index for listing chats by type, newest first (GET /v1/chats?chat_type=...)."""

from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_index("chat", ("chat_type", "start_timestamp", "chat_id"), False))


def down(migrator, db):
    migrator.migrate(migrator.drop_index("chat", "chat_chat_type_start_timestamp_chat_id"))
