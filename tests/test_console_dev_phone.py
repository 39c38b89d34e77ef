"""`smsgw dev` with no Twilio credentials, in a real browser: the dev phone texts the agent (an MMS
too) through signed webhooks, and the replies come back through the real twilio client and the
built-in Twilio emulator, with status callbacks; STOP/HELP/START behave as on a phone."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from tests.browser import PHONE, Screenshots, module_browser, wait_http
from tests.conftest import ROOT, free_port


def png(width: int = 24, height: int = 16) -> bytes:
    """A small valid PNG (an orange rectangle)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x88\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class DevProcess:
    """`smsgw dev` as a person runs it, in a folder of its own; its output is kept."""

    def __init__(self, folder: Path, port: int, env: dict[str, str]) -> None:
        """Start it now."""
        self.log_path = folder / "dev.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "dev", "--port", str(port)],
            cwd=str(folder),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        """What it printed."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (it stops its worker and Redis), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Iterator[tuple[str, str, Screenshots]]:
    """`smsgw dev` on a free port with a fake model and no Twilio credentials; (URL, key, shots)."""
    from tests.fakes import FakeModel

    folder = tmp_path_factory.mktemp("dev")
    model = FakeModel().start()
    model.reply_with("Nice picture! How can I help?")
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_", "GATEWAY_", "REDIS_"))
    }
    env.update(
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=model.url + "/v1",
        OPENAI_MODEL="fake-model",
        SMSGW_INSTANCE_PATH=str(folder / "instance"),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    env.pop("DATABASE_URL", None)
    env.pop("PUBLIC_BASE_URL", None)
    process = DevProcess(folder, port, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", process, timeout=60)  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while "sign in with" not in process.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        found = re.search(r"sign in with (\S+)\s+\(generated", process.log())
        assert found, process.log()
        yield url, found.group(1), Screenshots(tmp_path_factory.mktemp("artefacts"))
    finally:
        process.stop()
        model.stop()


@pytest.fixture(scope="module")
def browser(dev):
    """One headless Chromium for the module."""
    yield from module_browser()


def test_dev_phone_round_trip_with_an_mms_and_keywords(dev, browser, tmp_path):
    """Text and image out, the agent's reply back, the console showing the thumbnail; STOP/HELP/START."""
    url, key, shots = dev
    context = browser.new_context(viewport=PHONE, base_url=url)
    context.set_default_timeout(20_000)
    page = context.new_page()
    expect = playwright_api.expect
    page.goto("/dev/phone/")
    image = tmp_path / "photo.png"
    image.write_bytes(png())
    page.fill("#body", "hello, here is a photo")
    page.set_input_files("#image", str(image))
    page.click("#compose button[type=submit]")
    thread = page.locator("#thread")
    expect(thread.locator(".bubble.mine img")).to_have_count(1)
    expect(thread.locator(".bubble:not(.mine)")).to_contain_text("Nice picture! How can I help?")
    shots.take(page, "dev-phone")

    page.fill("#body", "HELP")
    page.click("#compose button[type=submit]")
    expect(thread.locator(".bubble:not(.mine)").nth(1)).to_contain_text("STOP")
    page.fill("#body", "STOP")
    page.click("#compose button[type=submit]")
    expect(thread).to_contain_text("You have successfully been unsubscribed")
    page.fill("#body", "are you there?")
    page.click("#compose button[type=submit]")
    expect(thread.locator(".bubble.mine").last).to_contain_text("are you there?")
    page.fill("#body", "START")
    page.click("#compose button[type=submit]")
    expect(thread).to_contain_text("You have successfully been re-subscribed")
    answers = thread.locator(".bubble:not(.mine)")
    # The agent, HELP's answer, Twilio's STOP and START texts; nothing for the text sent while opted out.
    expect(answers).to_have_count(4)

    # The console shows the chat with the image fetched from the emulator (the MMS media path).
    page.goto("/console/sign-in")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    # STOP ended the first chat; the texts after it opened a second one. The first holds the image.
    page.locator(".chat-list a", has_text="+15555550100").last.click()
    thumb = page.locator("img.thumb").first
    expect(thumb).to_be_visible()
    page.wait_for_function("document.querySelector('img.thumb').naturalWidth > 0")
    expect(page.locator(".msg.agent .status").first).to_have_text("delivered")
    context.close()
