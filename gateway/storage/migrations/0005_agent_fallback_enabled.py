"""Agents can turn off the fallback text sent when the model cannot answer (on by default)."""

from peewee import *


def up(migrator, db):
    migrator.migrate(migrator.add_column("agent", "fallback_enabled", BooleanField(default=True)))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("agent", "fallback_enabled"))
