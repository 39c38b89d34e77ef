"""Per-agent chat event webhooks (URL, events, signing secret) and tools; the tool calls a reply made."""

from peewee import *


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("agent", "webhook_url", TextField(null=True)),
        migrator.add_column("agent", "webhook_events", JSONField(null=True)),
        migrator.add_column("agent", "webhook_secret", TextField(null=True)),
        migrator.add_column("agent", "tools", JSONField(null=True)),  # None: no tools
        migrator.add_column("message", "tool_calls", JSONField(null=True)),
    )


def down(migrator, db):
    migrator.migrate(
        migrator.drop_column("agent", "webhook_url"),
        migrator.drop_column("agent", "webhook_events"),
        migrator.drop_column("agent", "webhook_secret"),
        migrator.drop_column("agent", "tools"),
        migrator.drop_column("message", "tool_calls"),
    )
