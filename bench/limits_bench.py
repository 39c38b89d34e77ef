"""Request-limit benchmark: what refusing an oversized unsigned request costs, next to a normal webhook.

The real gateway under gunicorn (the Procfile's settings, SQLite, its own Redis; no worker: only
the web tier is measured). Per case, requests are sent one at a time from this process over
loopback and each is timed from its first byte sent to its answer read; the gunicorn workers'
peak resident memory (VmHWM) is read before and after the case, so a body that is buffered shows
up as growth. Cases:

- a normal signed inbound-SMS webhook (the reference);
- an unsigned 100 MB POST with its Content-Length declared (the body is streamed until the
  server answers);
- an unsigned 100 MB chunked POST (no length: the server reads up to its cap);
- an unsigned form of 400,000 fields (3.9 MB, declared) and one of 10,000 fields inside the byte cap.

Prints a table and writes bench/results/limits.json. Knobs: BENCH_LIMIT_REQUESTS (per case, default 20).
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import _harness as h

from gateway.config import Settings, settings_to_env

REQUESTS = int(os.environ.get("BENCH_LIMIT_REQUESTS", "20"))
BIG = 100 * 1024 * 1024
PIECE = 64 * 1024
WEBHOOK_PATH = "/twilio/sms"


def peak_rss_mb(pids: list[int]) -> float:
    """The largest peak resident set (VmHWM) among the processes, in MB."""
    peak = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak / 1024


def exchange(port: int, head: bytes, body_pieces, timeout: float = 30.0) -> tuple[str, float]:
    """Send `head` then pieces of the body until the server answers; (status or error, seconds)."""
    started = time.perf_counter()
    sock = socket.create_connection((h.HOST, port), timeout=timeout)
    answer = b""
    try:
        sock.sendall(head)
        for piece in body_pieces:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(timeout)
        try:
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
    finally:
        sock.close()
    elapsed = time.perf_counter() - started
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "reset"
    return status, elapsed


def declared(size: int, fill: bytes = b"a"):
    """A body of `size` bytes in PIECE-sized pieces."""
    whole, rest = divmod(size, PIECE)
    piece = fill * PIECE
    for _ in range(whole):
        yield piece
    if rest:
        yield fill * rest


def chunked(size: int):
    """The same body in HTTP/1.1 chunked encoding."""
    for piece in declared(size):
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def head(path: str, extra: str) -> bytes:
    """An unsigned-looking POST's request head (X-Twilio-Signature present but wrong)."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {h.HOST}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"X-Twilio-Signature: forged\r\n{extra}\r\n"
    ).encode()


def cases(salt: str) -> dict[str, Any]:
    """name -> a function returning (head, body pieces) for request number i."""

    def normal(i: int):
        params = h.inbound_sms_params(i, h.sender_number(i % 50), h.OUR_NUMBERS[0], random.Random(i), salt)
        raw = h.signed_post(WEBHOOK_PATH, params, h.HOST)
        return raw, []

    many = urlencode({f"f{n}": "1" for n in range(400_000)}).encode()
    some = b"&".join([b"a=1"] * 10_000)  # 40 KB: under the byte cap, over the field cap
    return {
        "normal signed webhook": normal,
        "unsigned 100 MB, Content-Length": lambda i: (
            head(WEBHOOK_PATH, f"Content-Length: {BIG}\r\n"),
            declared(BIG),
        ),
        "unsigned 100 MB, chunked": lambda i: (
            head(WEBHOOK_PATH, "Transfer-Encoding: chunked\r\n"),
            chunked(BIG),
        ),
        "unsigned 400k fields (3.9 MB)": lambda i: (
            head(WEBHOOK_PATH, f"Content-Length: {len(many)}\r\n"),
            [many[k : k + PIECE] for k in range(0, len(many), PIECE)],
        ),
        "unsigned 10k fields (40 KB)": lambda i: (
            head(WEBHOOK_PATH, f"Content-Length: {len(some)}\r\n"),
            [some],
        ),
    }


def main() -> int:
    """Run every case against one gunicorn; print the table."""
    results: dict[str, Any] = {"requests_per_case": REQUESTS, "gunicorn": h.GUNICORN_SETTINGS, "cases": {}}
    with h.Bench("limits") as bench:
        redis_url = bench.start_redis()
        settings = Settings(
            database_url=f"sqlite:///{bench.workdir / 'limits.sqlite3'}",
            redis_url=redis_url,
            twilio_account_sid=h.ACCOUNT_SID,
            twilio_auth_token=h.AUTH_TOKEN,
            twilio_api_base_url="http://127.0.0.1:9",
            public_base_url=h.PUBLIC_BASE_URL,
            gateway_api_key="bench-gateway-key",
            queue_prefix="bench-limits",
        )
        env = h.child_env(settings_to_env(settings))
        upgrade = [sys.executable, "-m", "gateway.cli", "db", "upgrade"]
        subprocess.run(upgrade, env=env, cwd=str(bench.workdir), check=True, capture_output=True)
        port = bench.start_gunicorn("gateway", "gateway:create_app()", env, "/healthz")
        pids = bench.server_pids("gateway")
        results["rss_at_start_mb"] = round(peak_rss_mb(pids), 1)
        for name, build in cases(f"{time.time_ns():x}").items():
            before = peak_rss_mb(pids)
            times, statuses = [], {}
            for i in range(REQUESTS):
                raw, pieces = build(i)
                status, elapsed = exchange(port, raw, pieces)
                statuses[status] = statuses.get(status, 0) + 1
                times.append(elapsed)
            after = peak_rss_mb(pids)
            results["cases"][name] = {
                "statuses": statuses,
                "p50_ms": round(statistics.median(times) * 1000, 2),
                "max_ms": round(max(times) * 1000, 2),
                "peak_rss_mb_before": round(before, 1),
                "peak_rss_mb_after": round(after, 1),
            }
    rows = [("case", "answers", "p50", "max", "worker peak RSS")]
    for name, row in results["cases"].items():
        answers = ", ".join(f"{k}x{v}" for k, v in sorted(row["statuses"].items()))
        rss = f"{row['peak_rss_mb_before']:.1f} -> {row['peak_rss_mb_after']:.1f} MB"
        rows.append((name, answers, f"{row['p50_ms']:.1f} ms", f"{row['max_ms']:.1f} ms", rss))
    print(h.table(rows, (34, 12, 10, 10, 22)))
    print(f"{REQUESTS} requests per case, one at a time; {h.GUNICORN_SETTINGS}; peak RSS: the workers' VmHWM")
    h.RESULTS_DIR.mkdir(exist_ok=True)
    (h.RESULTS_DIR / "limits.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
