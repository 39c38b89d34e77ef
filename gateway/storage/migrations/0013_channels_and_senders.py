"""WhatsApp beside SMS: each chat's channel, WhatsApp's extra webhook fields on a message, and how a
number sends (through a Messaging Service, at most `max_mps` messages per second)."""

from peewee import *


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("chat", "channel", CharField(max_length=16, default="sms")),
        migrator.add_column("message", "details", JSONField(null=True)),
        migrator.add_column("phone_number", "messaging_service_sid", CharField(max_length=64, null=True)),
        migrator.add_column("phone_number", "max_mps", DoubleField(null=True)),
        migrator.add_index("chat", ("channel", "start_timestamp", "chat_id"), False),
    )


def down(migrator, db):
    migrator.migrate(
        migrator.drop_index("chat", "chat_channel_start_timestamp_chat_id"),
        *[
            migrator.drop_column(table, column)
            for table, column in [
                ("chat", "channel"),
                ("message", "details"),
                ("phone_number", "messaging_service_sid"),
                ("phone_number", "max_mps"),
            ]
        ],
    )
