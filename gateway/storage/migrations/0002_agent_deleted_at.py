"""Agents are soft-deleted: ended chats keep their agent, the API hides it."""

from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_column("agent", "deleted_at", DateTimeField(null=True)))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("agent", "deleted_at"))
