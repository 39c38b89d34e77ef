"""Logs a person can read: no full phone number or secret anywhere, one line per text and per failure."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.logs import Redactor, configure_logging, describe_setup, make_handler, mask_number, safe_url
from gateway.storage.models import Agent, Message, PhoneNumber, UserProfile
from tests.conftest import AUTH_TOKEN, GATEWAY_API_KEY, ROOT, WorkerProcess, post_twilio, wait_for
from tests.payloads import OUR_NUMBER, PERSON, inbound_sms

SECRETS = (AUTH_TOKEN, GATEWAY_API_KEY, "sk-test")


def leaks(text: str) -> list[str]:
    """Full phone numbers (with or without +) and secrets found in `text`."""
    found = [s for s in SECRETS if s in text]
    for number in (PERSON, OUR_NUMBER):
        if number in text or number.lstrip("+") in text:
            found.append(number)
    return found


@pytest.fixture
def captured(settings):
    """Every log line of this process, as the gateway's own handler writes them."""
    buffer = io.StringIO()
    handler = make_handler(settings, "text", stream=buffer)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_redaction_of_numbers_secrets_and_urls():
    """A number keeps its last 4 digits; secrets and URL passwords are hidden."""
    redact = Redactor(["s3cret-token"])
    assert mask_number("+14155550123") == "***0123"
    assert redact("to +14155550123 key s3cret-token url To=%2B14155550123") == (
        "to ***0123 key *** url To=***0123"
    )
    assert safe_url("postgresql://app:p%40ss@db.example:5432/smsgw?sslmode=require") == (
        "postgresql://app:***@db.example:5432/smsgw"
    )
    assert safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert safe_url("sqlite:////var/lib/smsgw/x.db") == "sqlite:////var/lib/smsgw/x.db"


def test_startup_line_names_every_service_without_secrets(settings_with):
    """Database, Redis, model endpoint and model, Twilio origin; no password, no key."""
    settings = settings_with(database_url="postgresql://app:hunter2-pass@db.example/smsgw")
    line = describe_setup(settings, "web")
    for part in ("postgresql://app:***@db.example/smsgw", settings.redis_url, "fake-model", "/v1"):
        assert part in line
    assert settings.twilio_api_base_url in line
    assert "hunter2-pass" not in line and not leaks(line)


def test_end_to_end_run_with_profile_memory_leaks_no_number_or_secret(
    client, settings, tmp_path, fake_model, fake_twilio, redis_conn, captured
):
    """Texts in, replies out, a failed model attempt and a profile update: logs, job ids and
    job descriptions never hold a full phone number or a secret; each text is one line."""
    agent = Agent.create(
        system_prompt="Be brief.", user_analysis_memory=True, retry_delay=0, retry_attempts=2
    )
    PhoneNumber.create(phone_number=OUR_NUMBER, inbound_agent=agent)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    try:
        fake_model.fail_next(status=500)
        for body in ("Hi, I am Ada.", "I like tea.", "Bye for now."):
            form = inbound_sms(body)
            post_twilio(client, "/twilio/sms", form)
            message = Message.get(Message.twilio_sid == form["MessageSid"])
            wait_for(lambda m=message: Message.get_by_id(m.id).reply_state == "answered", 30, message=body)
        wait_for(lambda: UserProfile.get_or_none(UserProfile.key == f"phone:{PERSON}"), 30, message="profile")
        job_keys = [k.decode() for k in redis_conn.scan_iter("rq:job:*")]
        descriptions = [
            (redis_conn.hget(k, "description") or b"").decode()
            for k in job_keys
            if redis_conn.type(k) == b"hash"
        ]
    finally:
        worker.stop()
    worker_log, web_log = worker.log(), captured.getvalue()

    assert any(k.startswith("rq:job:memory-profile-") for k in job_keys)
    assert any("user profile phone:***0123" in d for d in descriptions)
    for where, text in (("worker log", worker_log), ("web log", web_log)):
        assert not leaks(text), (where, leaks(text))
    assert not leaks("\n".join(job_keys + descriptions))
    # One line per text in (web) and per part out (worker), the number by its last 4 digits.
    assert len(re.findall(r"sms in: chat chat_\w+ from \*\*\*0123, received", web_log)) == 3
    assert len(re.findall(r"sms out: chat chat_\w+ to \*\*\*0123, part 1/1", worker_log)) == 3
    # The failed model attempt: one line naming the endpoint and the reason, no traceback.
    failed = [line for line in worker_log.splitlines() if "attempt failed at" in line]
    assert len(failed) == 1 and f"{fake_model.url}/v1/chat/completions" in failed[0] and "500" in failed[0]
    assert "Traceback" not in worker_log
    # The twilio client's request dumps are silenced.
    assert "twilio.http_client" not in worker_log


def test_json_log_lines_parse_with_the_same_fields(settings, capsys):
    """LOG_FORMAT=json: one JSON object per line, with the text line's fields."""
    root = logging.getLogger()
    saved = list(root.handlers)
    capsys.readouterr()
    try:
        configure_logging(settings.model_copy(update={"log_format": "json"}))
        from gateway.logs import traffic

        logging.getLogger("gateway.test").info(
            "sms in: chat %s from %s",
            "chat_1",
            mask_number(PERSON),
            extra=traffic("chat_1", "in", "received", PERSON),
        )
        logging.getLogger("gateway.test").info("the key is %s", GATEWAY_API_KEY)
    finally:
        for handler in [h for h in root.handlers if h not in saved]:
            root.removeHandler(handler)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "sms in: chat chat_1 from ***0123"
    assert (lines[0]["chat_id"], lines[0]["direction"], lines[0]["status"], lines[0]["number"]) == (
        "chat_1",
        "in",
        "received",
        "***0123",
    )
    assert lines[1]["message"] == "the key is ***"


def smsgw(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the `smsgw` command in a clean folder with only these settings."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_", "DATABASE_"))
    }
    environment.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:////nonexistent/smsgw-dir/x.db", "the folder /nonexistent/smsgw-dir does not exist"),
        (
            "postgresql://smsgw:hunter2-pass@127.0.0.1:1/gw",
            "cannot open the database postgresql://smsgw:***@127.0.0.1:1/gw",
        ),
        ("mysql://root@localhost/gw", "unknown kind of database 'mysql'"),
    ],
)
@pytest.mark.parametrize("command", [("db", "upgrade"), ("worker",)])
def test_a_bad_database_url_is_one_line_and_a_failing_exit(tmp_path, redis_server, url, says, command):
    """What is wrong and where, in one line, exit status 1; no folder is created unasked."""
    result = smsgw(tmp_path, *command, DATABASE_URL=url, REDIS_URL=redis_server.url)
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert says in lines[0] and "hunter2-pass" not in lines[0]
    assert not Path("/nonexistent/smsgw-dir").exists()


def test_a_job_failed_by_a_database_outage_is_one_line(captured):
    """RQ's traceback of a job the database failed (PostgreSQL restarted) is one line naming the error;
    a job that failed on a bug keeps its traceback."""
    rq_log = logging.getLogger("rq.worker")
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    g()\n'
    message = "Worker %s: job %s: exception raised while executing (%s)\n%s"
    down = (
        "peewee.OperationalError: server closed the connection unexpectedly\n"
        "\tThis probably means the server terminated abnormally\n"
    )
    rq_log.error(message, "w1", "reply-000000000007", "workers.jobs.reply_to_message", trace + down)
    rq_log.error(
        message, "w1", "reply-000000000008", "workers.jobs.reply_to_message", trace + "KeyError: 'x'\n"
    )
    lines = captured.getvalue().splitlines()
    one = [line for line in lines if "reply-000000000007" in line]
    assert len(one) == 1 and "WARNING" in one[0]
    assert "failed on the database: peewee.OperationalError: server closed the connection" in one[0]
    assert "Traceback" in captured.getvalue().split("reply-000000000008", 1)[1]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:////nonexistent/smsgw-dir/x.db", "the folder /nonexistent/smsgw-dir does not exist"),
        (
            "postgresql://smsgw:hunter2-pass@127.0.0.1:1/gw",
            "cannot open the database postgresql://smsgw:***@127.0.0.1:1/gw",
        ),
        ("mysql://root@localhost/gw", "unknown kind of database 'mysql'"),
    ],
)
def test_a_bad_database_url_stops_the_web_process_with_one_line(tmp_path, redis_server, url, says):
    """gunicorn 'gateway:create_app()' (the Procfile's web) with a wrong DATABASE_URL: the gateway
    says what and where in one line (gunicorn's own lines aside), gunicorn exits non-zero, and no
    folder is created unasked."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_", "DATABASE_"))
    }
    environment.update(DATABASE_URL=url, REDIS_URL=redis_server.url, PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--bind", "127.0.0.1:0", "gateway:create_app()"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).splitlines()
    # gunicorn's own lines start with its "[time] [pid] [LEVEL]" stamp; the rest are the gateway's.
    ours = [line for line in output if line.strip() and not line.startswith("[")]
    assert len(ours) == 1, output
    assert says in ours[0]
    assert "hunter2-pass" not in result.stdout + result.stderr
    assert not Path("/nonexistent/smsgw-dir").exists()
