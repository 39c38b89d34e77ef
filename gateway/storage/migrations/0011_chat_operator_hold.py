"""Human takeover: when an operator took a chat over (NULL: the agent answers)."""

from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_column("chat", "operator_held_at", DateTimeField(null=True)))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("chat", "operator_held_at"))
