"""Fields the consent, spend-guard and reply-bound rules read: per-agent caps and texts, a number's
timezone, and each message's kind and truncation flag."""

from peewee import *


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("agent", "max_tokens", IntegerField(default=1024)),
        migrator.add_column("agent", "max_reply_parts", IntegerField(default=5)),
        migrator.add_column("agent", "replies_per_person_per_hour", IntegerField(null=True)),
        migrator.add_column("agent", "replies_per_person_per_day", IntegerField(null=True)),
        migrator.add_column("agent", "tokens_per_day", IntegerField(null=True)),
        migrator.add_column("agent", "limit_notice_message", TextField(null=True)),
        migrator.add_column("agent", "opt_out_hint", TextField(null=True)),
        migrator.add_column("agent", "sending_hours", JSONField(null=True)),
        migrator.add_column("phone_number", "timezone", CharField(max_length=64, null=True)),
        migrator.add_column("message", "kind", CharField(max_length=16, default="text")),
        migrator.add_column("message", "truncated", BooleanField(default=False)),
    )


def down(migrator, db):
    migrator.migrate(
        *[
            migrator.drop_column(table, column)
            for table, column in [
                ("agent", "max_tokens"),
                ("agent", "max_reply_parts"),
                ("agent", "replies_per_person_per_hour"),
                ("agent", "replies_per_person_per_day"),
                ("agent", "tokens_per_day"),
                ("agent", "limit_notice_message"),
                ("agent", "opt_out_hint"),
                ("agent", "sending_hours"),
                ("phone_number", "timezone"),
                ("message", "kind"),
                ("message", "truncated"),
            ]
        ]
    )
