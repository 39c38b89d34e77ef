"""What the browser tests share: a real gateway (gunicorn) and worker on one module's settings, and
headless Chromium from Debian's package driven by playwright (never a downloaded browser).

`scripts/ensure-chromium.sh` (run by `make test`) installs /usr/bin/chromium when it is missing.
Screenshots go to pytest's temporary folder and to test-artifacts/screenshots/ (git-ignored, a fixed
place CI can keep); with CONSOLE_SCREENSHOTS=<dir> they are also written there (that is how
docs/screenshots/ is refreshed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from gateway.config import Settings, settings_to_env
from tests.conftest import ROOT

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Chromium as root in a container: no sandbox; no background traffic to Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
# Every screenshot is copied here too: one fixed folder, kept by CI as the run's artefacts.
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"


def launch_chromium(playwright):
    """Debian's headless Chromium; a clear failure when it is not installed."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} not found: run scripts/ensure-chromium.sh (as root) or set CHROMIUM")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def module_browser() -> Iterator:
    """One headless Chromium for a test module (use as a module-scoped fixture's body)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a gateway or worker process on these settings (and nothing from ours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_"))}
    env.update(settings_to_env(settings))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Process:
    """A child process with its output in a log file; stop() always ends it and its group."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        """Start it now."""
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            args, cwd=str(ROOT), env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        """What it printed so far."""
        return self.log_path.read_text(errors="replace")


def wait_http(url: str, proc: Process, timeout: float = 30) -> None:
    """Wait until `url` answers (any status); fail with the process's log if it died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"process exited:\n{proc.log()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s:\n{proc.log()[-3000:]}")


def start_gateway(settings: Settings, port: int, log_dir: Path) -> Iterator[Process]:
    """gunicorn serving the gateway on 127.0.0.1:port, and a `smsgw worker`, both on `settings`."""
    env = child_env(settings)
    web = Process(
        [
            sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", "8",
            "--bind", f"127.0.0.1:{port}", "gateway:create_app()",
        ],
        env,
        log_dir / "gateway.log",
    )  # fmt: skip
    worker = Process([sys.executable, "-m", "gateway.cli", "worker"], env, log_dir / "worker.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", web)
        yield web
    finally:
        worker.stop()
        web.stop()


class Screenshots:
    """Saves full-page screenshots in `folder`, ARTIFACTS, and $CONSOLE_SCREENSHOTS when set."""

    def __init__(self, folder: Path) -> None:
        """Screenshots go to `folder` (and the copies' folders)."""
        self.folder = folder
        extra = os.environ.get("CONSOLE_SCREENSHOTS")
        self.copies = [ARTIFACTS] + ([Path(extra)] if extra else [])

    def take(self, page, name: str) -> Path:
        """Save the page as <name>.png; return the path in `folder`."""
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        for folder in self.copies:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / path.name)
        return path
