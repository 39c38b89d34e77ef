"""Sending survives crashes: the process sending an SMS part is recorded on it (claimed_by), and status
callbacks that arrive before the worker stored the message's SID wait in early_status to be applied."""

from peewee import *


def up(migrator, db):
    class EarlyStatus(Model):
        twilio_sid = CharField(max_length=64, index=True)
        status = CharField(max_length=16)
        error_code = CharField(max_length=16, null=True)
        error_message = TextField(null=True)
        received_at = DateTimeField()

        class Meta:
            database = db
            table_name = "early_status"

    db.create_tables([EarlyStatus])
    migrator.migrate(migrator.add_column("message", "claimed_by", CharField(max_length=120, null=True)))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("message", "claimed_by"))
    db.execute_sql("DROP TABLE IF EXISTS early_status")
