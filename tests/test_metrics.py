"""GET /metrics: Prometheus text, summed across a real gunicorn's two workers and the RQ worker."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.config import settings_to_env
from tests.conftest import GATEWAY_API_KEY, PUBLIC_BASE_URL, ROOT, sign, wait_for
from tests.fakes.receiver import Receiver
from tests.payloads import inbound_sms

TOKEN = "metrics-token-0123456789"
HOST = "127.0.0.1"


@pytest.fixture
def settings(settings, tmp_path):
    """A metrics token, and the metrics directory of this test alone; one reply per person per hour
    (a second text is refused, rate_limited) and loopback tool and webhook servers allowed."""
    return settings.model_copy(
        update={
            "metrics_token": TOKEN,
            "prometheus_multiproc_dir": str(tmp_path / "metrics"),
            "spend_replies_per_person_per_hour": 1,
            "allow_private_urls": True,
        }
    )


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One HTTP request on a new connection (so gunicorn's workers share the load); (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return None, b""
    finally:
        conn.close()


@pytest.fixture
def gunicorn(app, settings, tmp_path) -> Iterator[int]:
    """`gunicorn --workers 2` serving the gateway on the test settings; yields its port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_", "PROMETHEUS_"))}
    env.update(settings_to_env(settings))
    log = open(tmp_path / "gunicorn.log", "ab")  # noqa: SIM115 - kept open for the process's life
    argv = [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "2", "--bind", f"{HOST}:{port}"]
    proc = subprocess.Popen([*argv, "gateway:create_app()"], cwd=str(ROOT), env=env, stdout=log, stderr=log)
    try:
        wait_for(lambda: request(port, "GET", "/healthz")[0] == 200, 30, message="gunicorn up")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def text_in(port: int, form: dict[str, str]) -> int:
    """POST a signed inbound SMS to the real server; its status."""
    body = urllib.parse.urlencode(form).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": sign(PUBLIC_BASE_URL + "/twilio/sms", form),
    }
    return request(port, "POST", "/twilio/sms", body, headers)[0]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    status, body = request(port, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_the_token(client, settings_with, app):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and b"smsgw_queue_depth" in response.data
    app.config["SETTINGS"] = settings_with(metrics_token=None)
    refused = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 403 and b"METRICS_TOKEN" in refused.data


def test_metrics_count_an_end_to_end_run_across_processes(gunicorn, worker, fake_model, fake_twilio):
    fake_model.reply_with("Thanks, noted.")
    people = ["+14155550101", "+14155550102", "+14155550103"]
    forms = [inbound_sms(f"hello from {n}", From=n) for n in people]
    for form in forms:
        assert text_in(gunicorn, form) == 200
    assert text_in(gunicorn, forms[0]) == 200  # Twilio retrying a webhook: a duplicate
    assert text_in(gunicorn, inbound_sms("HELP", From="+14155550104")) == 200  # a keyword
    fake_twilio.wait_for_messages(3, timeout=30)

    # The RQ worker counts the answers, gunicorn's workers the rest: /metrics sums every process.
    def counted() -> dict | None:
        samples = scrape(gunicorn)
        return samples if value(samples, "smsgw_reply_delay_seconds_count") >= 3 else None

    samples = wait_for(counted, 30, message="three replies counted")
    assert value(samples, "smsgw_texts_received_total", outcome="answered") == 3
    assert value(samples, "smsgw_texts_received_total", outcome="duplicate") == 1
    assert value(samples, "smsgw_texts_received_total", outcome="keyword") == 1
    assert value(samples, "smsgw_reply_parts_total", result="sent", error_code="") == 3
    assert (
        value(samples, "smsgw_model_calls_total", agent="agent_default", model="fake-model", outcome="ok")
        == 3
    )
    assert (
        value(
            samples, "smsgw_model_tokens_total", agent="agent_default", model="fake-model", kind="completion"
        )
        == 3 * 2
    )
    assert value(samples, "smsgw_model_call_seconds_count", agent="agent_default", model="fake-model") == 3
    assert ("smsgw_queue_depth", (("queue", f"{worker.settings.queue_prefix}-default"),)) in samples
    # Scraped again (likely by the other gunicorn worker): the same sums.
    again = scrape(gunicorn)
    assert value(again, "smsgw_texts_received_total", outcome="answered") == 3
    assert value(again, "smsgw_texts_received_total", outcome="duplicate") == 1


def test_metrics_count_refusals_failures_tools_and_deliveries_across_processes(
    gunicorn, worker, client, fake_model, fake_twilio
):
    """The outcomes the first run does not reach: opted out, rate limited, a failed part by its
    error code, a tool call and a webhook delivery (the worker's), and the queue's oldest job age."""
    with Receiver() as receiver:
        tool = {
            "type": "function",
            "name": "lookup_order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
            "url": receiver.url + "/tools/lookup_order",
        }
        changed = client.patch(
            "/v1/agents/agent_default",
            json={
                "tools": [tool],
                "webhook_url": receiver.url + "/events",
                "webhook_secret": "whsec_metrics_0123456789",
                "webhook_events": ["message_received"],
            },
            headers={"Authorization": f"Bearer {GATEWAY_API_KEY}"},
        )
        assert changed.status_code == 200, changed.get_json()
        asker, quitter, unreachable = "+14155550111", "+14155550112", "+14155550113"
        fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
        fake_model.reply_with("Order 981 ships tomorrow.")

        assert text_in(gunicorn, inbound_sms("where is 981?", From=asker)) == 200  # a tool, then answered
        wait_for(lambda: fake_twilio.messages_to(asker), 30, message="the answer")
        assert text_in(gunicorn, inbound_sms("and 982?", From=asker)) == 200  # over 1 reply an hour
        assert text_in(gunicorn, inbound_sms("STOP", From=quitter)) == 200
        assert text_in(gunicorn, inbound_sms("hello?", From=quitter)) == 200  # opted out: not answered
        fake_twilio.fail_to(unreachable, code=21211, status=400)
        assert text_in(gunicorn, inbound_sms("hi", From=unreachable)) == 200  # its reply part fails

        tool_ok = {"agent": "agent_default", "tool": "lookup_order", "outcome": "ok"}
        delivered = {"event": "message_received", "outcome": "delivered"}

        def counted() -> dict | None:
            samples = scrape(gunicorn)
            wanted = [
                value(samples, "smsgw_texts_received_total", outcome="rate_limited"),
                value(samples, "smsgw_texts_received_total", outcome="opted_out"),
                value(samples, "smsgw_reply_parts_total", result="failed", error_code="21211"),
                value(samples, "smsgw_tool_calls_total", **tool_ok),
                value(samples, "smsgw_webhook_deliveries_total", **delivered),
            ]
            return samples if all(wanted) else None

        samples = wait_for(counted, 60, message="every outcome counted")

    assert value(samples, "smsgw_texts_received_total", outcome="rate_limited") == 1
    assert value(samples, "smsgw_texts_received_total", outcome="opted_out") == 1
    assert value(samples, "smsgw_texts_received_total", outcome="keyword") == 1  # the STOP
    assert value(samples, "smsgw_reply_parts_total", result="failed", error_code="21211") >= 1
    assert (
        value(samples, "smsgw_tool_calls_total", agent="agent_default", tool="lookup_order", outcome="ok")
        == 1
    )
    assert (
        value(samples, "smsgw_webhook_deliveries_total", event="message_received", outcome="delivered") >= 1
    )
    queue = (("queue", f"{worker.settings.queue_prefix}-default"),)
    assert samples[("smsgw_queue_oldest_job_age_seconds", queue)] >= 0
    assert ("smsgw_queue_depth", queue) in samples


def test_the_dashboard_reads_only_metrics_the_gateway_exports():
    """Every smsgw_* name in docs/grafana-dashboard.json is one of gateway/metrics.py's (a counter's
    _total, a histogram's _bucket/_sum/_count) or a gauge read at scrape time."""
    exported = set(metrics.SCRAPED_GAUGES)
    for name, (kind, _, _) in metrics.SPECS.items():
        full = f"{metrics.PREFIX}_{name}"
        if kind == "counter":
            exported.add(f"{full}_total")
        else:
            exported |= {f"{full}_bucket", f"{full}_sum", f"{full}_count"}
    dashboard = (ROOT / "docs" / "grafana-dashboard.json").read_text()
    used = set(re.findall(r"\bsmsgw_[a-z_]+", dashboard))
    assert used, "the dashboard names no metric"
    assert used <= exported, used - exported
