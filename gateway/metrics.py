"""Prometheus metrics, correct across processes: gunicorn's workers and the RQ worker each write
their own files in one directory (prometheus_client's multiprocess mode), and GET /metrics sums them.

`init(settings)` runs once per process before anything is counted (create_app, the worker
runner): it points prometheus_client at the directory (PROMETHEUS_MULTIPROC_DIR, else a directory
per queue prefix in the temp dir) and only then imports it, because prometheus_client picks its
storage at import time. Before init, and if it failed, counting does nothing: metrics never
break a reply. Only counters and histograms are stored; queue depth and the oldest job's age are
read from Redis when /metrics is scraped.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from gateway.config import Settings

log = logging.getLogger(__name__)

PREFIX = "smsgw"
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

# name -> (kind, help, label names)
SPECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "texts_received": (
        "counter",
        "Inbound texts by outcome: answered, fallback, failed, duplicate, opted_out, keyword, rate_limited, "
        "budget_exhausted, held.",
        ("outcome",),
    ),
    "reply_parts": (
        "counter",
        "Reply SMS parts handed to Twilio (sent) or failed, by error code.",
        ("result", "error_code"),
    ),
    "model_calls": (
        "counter",
        "Model calls by agent, model and outcome (ok or the error code); agent empty: no agent's call.",
        ("agent", "model", "outcome"),
    ),
    "model_tokens": (
        "counter",
        "Model tokens by agent, model and kind (prompt, completion).",
        ("agent", "model", "kind"),
    ),
    "model_call_seconds": ("histogram", "Model call latency by agent and model.", ("agent", "model")),
    "reply_delay_seconds": (
        "histogram",
        "Time from an inbound text to its reply's first part accepted by Twilio.",
        (),
    ),
    "webhook_deliveries": ("counter", "Chat event deliveries by event and outcome.", ("event", "outcome")),
    "tool_calls": (
        "counter",
        "Agent tool calls by agent, tool and outcome (ok, error, timeout, refused, failed, bad_arguments, "
        "unknown_tool).",
        ("agent", "tool", "outcome"),
    ),
}

# Gauges gateway/monitoring.py reads from Redis when /metrics is scraped (not stored in files).
SCRAPED_GAUGES = (f"{PREFIX}_queue_depth", f"{PREFIX}_queue_oldest_job_age_seconds")

_lock = threading.Lock()
_metrics: dict[str, Any] = {}
_directory: str | None = None


def metrics_directory(settings: Settings) -> str:
    """The directory the processes of this gateway share for their metric files."""
    if settings.prometheus_multiproc_dir:
        return settings.prometheus_multiproc_dir
    return str(Path(tempfile.gettempdir()) / f"smsgw-metrics-{settings.queue_prefix}")


def init(settings: Settings) -> None:
    """Set up this process's metrics (once; later calls do nothing). Never raises."""
    global _directory
    with _lock:
        if _directory is not None:
            return
        try:
            directory = metrics_directory(settings)
            Path(directory).mkdir(parents=True, exist_ok=True)
            # prometheus_client reads this variable itself, at import: set it before the import.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
            import prometheus_client

            for name, (kind, help_text, labels) in SPECS.items():
                if kind == "counter":
                    _metrics[name] = prometheus_client.Counter(f"{PREFIX}_{name}", help_text, labels)
                else:
                    _metrics[name] = prometheus_client.Histogram(
                        f"{PREFIX}_{name}", help_text, labels, buckets=LATENCY_BUCKETS
                    )
            _directory = directory
        except Exception:
            log.exception("metrics: could not set up; nothing will be counted in this process")


def count(name: str, amount: float = 1, **labels: str) -> None:
    """Add `amount` to a counter (no-op before init). Never raises."""
    metric = _metrics.get(name)
    if metric is None or amount <= 0:
        return
    try:
        (metric.labels(**labels) if labels else metric).inc(amount)
    except Exception:
        log.exception("metrics: could not count %s", name)


def observe(name: str, value: float, **labels: str) -> None:
    """Record one value in a histogram (no-op before init). Never raises."""
    metric = _metrics.get(name)
    if metric is None:
        return
    try:
        (metric.labels(**labels) if labels else metric).observe(max(0.0, value))
    except Exception:
        log.exception("metrics: could not observe %s", name)


def exposition(extra_collectors: list[Any] = ()) -> tuple[bytes, str]:
    """The text /metrics serves: every process's files summed, plus `extra_collectors`; and its type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if _directory is not None:
        MultiProcessCollector(registry, path=_directory)
    for collector in extra_collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
