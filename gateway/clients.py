"""The process's long-lived service clients (Redis, the model, Twilio): each built once per key.

A client holds a connection pool, so every thread of a process shares one per set of settings
that shape it (URL, credentials, timeout). Built under a lock on first use, read without one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class ClientCache(Generic[T]):
    """Clients by key, each built once (thread-safe)."""

    def __init__(self) -> None:
        """An empty cache."""
        self._clients: dict[Hashable, T] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The client for `key`, built by `build()` the first time it is asked for."""
        client = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.get(key)
                if client is None:
                    client = self._clients[key] = build()
        return client
