"""Initial schema. Column defaults (ids, timestamps) are set by the application models."""

from peewee import *


def up(migrator, db):
    class Agent(Model):
        agent_id = CharField(primary_key=True, max_length=64)
        name = CharField(max_length=200, default="")
        model = CharField(null=True, max_length=200)
        system_prompt = TextField(default="")
        temperature = FloatField(null=True)
        num_last_messages = IntegerField(default=20)
        full_session_memory = BooleanField(default=True)
        summary_memory = BooleanField(default=False)
        user_analysis_memory = BooleanField(default=False)
        retry_attempts = IntegerField(default=3)
        retry_delay = FloatField(default=1.0)
        max_concurrent_invocations = IntegerField(default=1)
        end_chat_after_silence_ms = IntegerField(default=3600000)
        auto_close_message = TextField(null=True)
        help_message = TextField(null=True)
        fallback_message = TextField(null=True)
        accepts_images = BooleanField(default=False)
        analysis_fields = JSONField(default=list)
        is_default = BooleanField(index=True, default=False)
        created_at = DateTimeField()
        updated_at = DateTimeField()

        class Meta:
            database = db
            table_name = "agent"

    db.create_tables([Agent])

    class Chat(Model):
        chat_id = CharField(primary_key=True, max_length=64)
        agent = ForeignKeyField(Agent, on_delete="RESTRICT")
        chat_type = CharField(max_length=16, default="api_chat")
        chat_status = CharField(max_length=16, default="ongoing")
        user_id = CharField(null=True, max_length=200)
        from_number = CharField(null=True, max_length=20)
        to_number = CharField(null=True, max_length=20)
        ongoing_pair = CharField(unique=True, null=True, max_length=48)
        metadata = JSONField(default=dict)
        dynamic_variables = JSONField(default=dict)
        start_timestamp = DateTimeField()
        end_timestamp = DateTimeField(null=True)
        end_reason = CharField(null=True, max_length=64)
        last_activity_at = DateTimeField()
        summary = TextField(null=True)
        summary_message_id = IntegerField(null=True)
        chat_analysis = JSONField(null=True)

        class Meta:
            database = db
            table_name = "chat"
            indexes = (
                (("start_timestamp", "chat_id"), False),
                (("agent", "start_timestamp", "chat_id"), False),
                (("chat_status", "start_timestamp", "chat_id"), False),
                (("user_id", "start_timestamp", "chat_id"), False),
                (("chat_status", "last_activity_at"), False),
            )

    db.create_tables([Chat])

    class Contact(Model):
        our_number = CharField(max_length=20)
        phone_number = CharField(max_length=20)
        opted_out = BooleanField(default=False)
        opted_out_at = DateTimeField(null=True)
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = "contact"
            indexes = ((("our_number", "phone_number"), True),)

    db.create_tables([Contact])

    class IdempotencyKey(Model):
        key = CharField(primary_key=True)
        request_hash = CharField(max_length=64)
        status_code = IntegerField()
        response = JSONField()
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = "idempotency_key"

    db.create_tables([IdempotencyKey])

    class Message(Model):
        chat = ForeignKeyField(Chat, on_delete="CASCADE")
        role = CharField(max_length=8)
        content = TextField(default="")
        media = JSONField(default=list)
        twilio_sid = CharField(unique=True, null=True, max_length=64)
        status = CharField(null=True, max_length=16)
        error_code = CharField(null=True, max_length=16)
        error_message = TextField(null=True)
        from_number = CharField(null=True, max_length=20)
        to_number = CharField(null=True, max_length=20)
        reply_state = CharField(index=True, null=True, max_length=16)
        reply_to = ForeignKeyField("self", null=True, on_delete="SET NULL")
        part_index = IntegerField(null=True)
        prompt_tokens = IntegerField(null=True)
        completion_tokens = IntegerField(null=True)
        created_at = DateTimeField()
        updated_at = DateTimeField()

        class Meta:
            database = db
            table_name = "message"
            indexes = ((("chat", "id"), False),)

    db.create_tables([Message])

    class PhoneNumber(Model):
        phone_number = CharField(primary_key=True, max_length=20)
        inbound_agent = ForeignKeyField(Agent, null=True, on_delete="RESTRICT")
        outbound_agent = ForeignKeyField(Agent, null=True, on_delete="RESTRICT")
        twilio_sid = CharField(null=True, max_length=64)
        created_at = DateTimeField()
        updated_at = DateTimeField()

        class Meta:
            database = db
            table_name = "phone_number"

    db.create_tables([PhoneNumber])

    class UserProfile(Model):
        key = CharField(primary_key=True, max_length=220)
        profile = JSONField(default=dict)
        last_message_id = IntegerField(null=True)
        updated_at = DateTimeField()

        class Meta:
            database = db
            table_name = "user_profile"

    db.create_tables([UserProfile])


def down(migrator, db):
    migrator.migrate(migrator.drop_table("user_profile"))
    migrator.migrate(migrator.drop_table("phone_number"))
    migrator.migrate(migrator.drop_table("message"))
    migrator.migrate(migrator.drop_table("idempotency_key"))
    migrator.migrate(migrator.drop_table("contact"))
    migrator.migrate(migrator.drop_table("chat"))
    migrator.migrate(migrator.drop_table("agent"))
