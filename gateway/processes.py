"""Which process holds something, and whether that process is gone.

Work that one process claims (RQ's scheduler lock, the cron lock, an SMS part being handed to
Twilio) is marked with an owner token, "host|pid|process start time|nonce". Another process of the
same machine can then tell at once that the holder died (SIGKILL, OOM, a crash) and take over,
instead of waiting for a lease or a lock TTL; a holder on another machine is judged by its lease.
The start time guards against a reused pid (a container restart gives the new process pid 1 again).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def _boot_time() -> float | None:
    """When this machine booted (epoch seconds), from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


_BOOT_TIME = _boot_time()
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Slack for comparing start times (clock ticks, rounding, boot-time drift), in seconds.
_SLACK = 2.0


def process_started_at(pid: int) -> float | None:
    """When process `pid` of this machine started (epoch seconds); None if unknown or gone."""
    if _BOOT_TIME is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 (starttime, in clock ticks after boot) comes after the ")" that ends the name.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return _BOOT_TIME + int(fields[19]) / _CLOCK_TICKS
    except (IndexError, ValueError):
        return None


def process_is_alive(pid: int, born: float | None = None) -> bool:
    """True when process `pid` of this machine exists and, given `born` (epoch s), is no younger.

    A process that started after `born` only reuses the pid of the one we mean.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process with that pid exists under another user
    if born is not None:
        started = process_started_at(pid)
        if started is not None and started > born + _SLACK:
            return False
    return True


def owner_token() -> str:
    """A token naming this process: "host|pid|start time|nonce" (a fresh nonce per call)."""
    started = process_started_at(os.getpid()) or time.time()
    return f"{socket.gethostname()}|{os.getpid()}|{started:.0f}|{uuid.uuid4().hex[:8]}"


# This process's token for claims that live as long as the process (SMS parts being sent).
PROCESS_TOKEN = owner_token()


def owner_is_dead(token: str | bytes | None) -> bool:
    """True when an `owner_token` names a process of this machine that is gone.

    False for tokens of other machines (their lease or TTL decides) and for anything unreadable.
    """
    if not token:
        return False
    text = token.decode() if isinstance(token, bytes) else token
    parts = text.split("|")
    if len(parts) != 4 or parts[0] != socket.gethostname():
        return False
    try:
        pid, born = int(parts[1]), float(parts[2])
    except ValueError:
        return False
    if pid == os.getpid():  # this process, or an older one that had our pid (a container restart)
        return born < (process_started_at(pid) or born) - _SLACK
    return not process_is_alive(pid, born)


# Claims held by attempts running in this process now (see `attempt_token`).
_live_attempts: set[str] = set()
_live_lock = threading.Lock()


@contextmanager
def attempt_token() -> Iterator[str]:
    """An owner token for one attempt of this process, known live until the block ends.

    A claim made with it is abandoned once the block has ended, even though the process lives on
    (the attempt failed after claiming): `claim_is_abandoned` tells the two apart.
    """
    token = owner_token()
    with _live_lock:
        _live_attempts.add(token)
    try:
        yield token
    finally:
        with _live_lock:
            _live_attempts.discard(token)


def claim_is_abandoned(token: str | None) -> bool:
    """True when the attempt that made a claim is over: its process is gone, or (this process) it ended."""
    if not token:
        return False
    if token.split("|")[:3] == PROCESS_TOKEN.split("|")[:3]:
        with _live_lock:
            return token not in _live_attempts
    return owner_is_dead(token)
