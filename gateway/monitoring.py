"""GET /metrics: Prometheus' text format, for holders of METRICS_TOKEN (unset: refused).

The counters and histograms come from every process's files (gateway/metrics.py); the queue's
depth and its oldest job's age are read from Redis at scrape time, so they are never stale.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError
from rq import Queue

from gateway import metrics
from gateway.queue import fetch_job

log = logging.getLogger(__name__)

bp = Blueprint("monitoring", __name__)


class QueueCollector:
    """Queue depth and the age of its oldest waiting job, read when scraped."""

    def __init__(self, queue: Queue | None) -> None:
        """`queue`: the gateway's queue (None without Redis: nothing is reported)."""
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The two gauges, or nothing when Redis does not answer."""
        if self.queue is None:
            return
        try:
            depth = self.queue.count
            oldest_age = 0.0
            ids = self.queue.get_job_ids(0, 1)
            if ids:
                job = fetch_job(ids[0], self.queue.connection)
                if job.enqueued_at is not None:
                    enqueued = job.enqueued_at.replace(tzinfo=job.enqueued_at.tzinfo or UTC)
                    oldest_age = max(0.0, (datetime.now(UTC) - enqueued).total_seconds())
        except (RedisError, Exception) as exc:  # a job that vanished between the two reads, or Redis down
            log.warning("metrics: could not read the queue: %s", exc)
            return
        name = self.queue.name
        depth_name, age_name = metrics.SCRAPED_GAUGES
        gauge = GaugeMetricFamily(depth_name, "Jobs waiting in the queue.", labels=["queue"])
        gauge.add_metric([name], depth)
        yield gauge
        age = GaugeMetricFamily(
            age_name,
            "How long the oldest waiting job has waited.",
            labels=["queue"],
        )
        age.add_metric([name], oldest_age)
        yield age


def _refuse(status: int, message: str) -> Response:
    """A JSON refusal like the API's."""
    response = jsonify({"error": {"code": "unauthorized", "message": message}})
    response.status_code = status
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    """Prometheus text format, for `Authorization: Bearer <METRICS_TOKEN>`."""
    expected = current_app.config["SETTINGS"].metrics_token
    if not expected:
        return _refuse(403, "/metrics is disabled because METRICS_TOKEN is not set on the server.")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return _refuse(401, "Send `Authorization: Bearer <METRICS_TOKEN>`.")
    body, content_type = metrics.exposition([QueueCollector(current_app.task_queue)])  # type: ignore[attr-defined]
    return Response(body, mimetype=None, content_type=content_type)
