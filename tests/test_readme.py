"""The README's /v1 examples run as written against a live gateway: real gunicorn, a real worker.

Only the origin changes (`localhost:5000` becomes the test gunicorn's port); the key comes from a
`.env` in the folder the examples run in, as the README says. Twilio and the model are the
loopback fakes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request

import pytest

from gateway.config import settings_to_env
from gateway.storage.models import Chat, Contact, Message
from tests.conftest import GATEWAY_API_KEY, ROOT, WorkerProcess, free_port, wait_for
from tests.payloads import PERSON


def readme_examples() -> str:
    """The shell block of the README's chat API section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The chat API (`/v1`)") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the chat API section has no ```sh block"
    return match.group(1)


@pytest.fixture
def gunicorn(app, settings, tmp_path):
    """`gunicorn 'gateway:create_app()'` on a free loopback port, with the test settings."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_"))}
    env.update(settings_to_env(settings), PYTHONPATH=str(ROOT))
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "1",
            "--threads",
            "4",
            "-b",
            f"127.0.0.1:{port}",
            "gateway:create_app()",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200
        except OSError:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            return False

    wait_for(healthy, 30, interval=0.1, message="gunicorn to answer")
    yield port
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def test_readme_examples_run_as_written(settings, gunicorn, tmp_path, fake_model, fake_twilio):
    """Every command of the README's chat API block succeeds (curl --fail-with-body), in order,
    and does what it says: the chat answered, the SMS conversation started and its text sent."""
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    try:
        script = readme_examples().replace("localhost:5000", f"127.0.0.1:{gunicorn}")
        (tmp_path / ".env").write_text(f"GATEWAY_API_KEY={GATEWAY_API_KEY}\n")
        env = {k: v for k, v in os.environ.items() if k != "GATEWAY_API_KEY"}
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        api_chat = Chat.get(Chat.user_id == "u42")
        assert [m.role for m in Message.select().where(Message.chat == api_chat).order_by(Message.id)] == [
            "user",
            "agent",
        ]
        [opening] = fake_twilio.wait_for_messages(1, timeout=30)
        assert opening["To"] == PERSON and opening["From"] == "+14155550100"
        assert opening["Body"].endswith("Reply STOP to opt out.")
        # The do-not-text example put the other number on the list.
        assert Contact.get(Contact.phone_number == "+14155550199").opted_out is True
    finally:
        worker.stop()
