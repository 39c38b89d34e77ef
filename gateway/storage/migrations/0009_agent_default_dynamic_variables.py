"""The {{variables}} an agent's inbound SMS chats are filled with (a chat's own override them)."""

from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_column("agent", "default_dynamic_variables", JSONField(null=True)))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("agent", "default_dynamic_variables"))
