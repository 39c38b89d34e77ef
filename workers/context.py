"""What a job needs from the process that runs it: the settings, set once by the runner.

Jobs are plain module-level functions enqueued by dotted path, so they cannot be handed
settings as arguments; they call `get_settings()` instead.
"""

from __future__ import annotations

import threading

from gateway.config import Settings, load_settings

_lock = threading.Lock()
_settings: Settings | None = None


def configure(settings: Settings | None) -> None:
    """Set the settings every job of this process sees (None forgets them)."""
    global _settings
    with _lock:
        _settings = settings


def get_settings() -> Settings:
    """The configured settings; outside a configured worker, the environment's (loaded once)."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = load_settings()
        return _settings
