"""An index on the person of a chat: user profile memory reads all of one person's SMS chats."""

from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_index("chat", ("to_number", "chat_type"), False))


def down(migrator, db):
    migrator.migrate(migrator.drop_index("chat", "chat_to_number_chat_type"))
