"""A loopback endpoint that receives webhooks and tool calls: records every POST, scripted answers."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from tests.fakes.http import LoopbackServer, Request, Response


class Receiver(LoopbackServer):
    """Records each request; answers the queued statuses first, then `answer(request)` (default 200 {})."""

    def __init__(self) -> None:
        """Nothing listens until start()."""
        super().__init__()
        self.requests: list[Request] = []
        self.answer: Callable[[Request], Response] = lambda request: Response.json(200, {"ok": True})
        self.held = threading.Event()  # while clear... set by `hold()`: requests wait for `release()`
        self._release = threading.Event()
        self._release.set()
        self._statuses: deque[int] = deque()
        self._cond = threading.Condition()

    def answer_next(self, *statuses: int) -> None:
        """Answer the next requests with these HTTP statuses, in order."""
        with self._cond:
            self._statuses.extend(statuses)

    def hold(self) -> None:
        """Make requests wait (a slow receiver) until release()."""
        self._release.clear()

    def release(self) -> None:
        """Let held requests be answered."""
        self._release.set()

    def wait_for_requests(self, n: int, timeout: float = 20) -> list[Request]:
        """Block until at least `n` requests arrived; returns them."""
        with self._cond:
            self.wait_until(self._cond, lambda: len(self.requests) >= n, timeout, f"{n} requests")
            return list(self.requests)

    def bodies(self) -> list[Any]:
        """The JSON bodies received so far."""
        with self._cond:
            return [r.json() for r in self.requests]

    def handle(self, request: Request) -> Response:
        """Record, wait while held, answer."""
        with self._cond:
            self.requests.append(request)
            self._cond.notify_all()
            status = self._statuses.popleft() if self._statuses else None
        self._release.wait(30)
        if status is not None:
            return Response.json(status, {"error": "scripted"})
        return self.answer(request)
