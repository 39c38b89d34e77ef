"""Chat event webhooks: signed deliveries a receiver written from the README verifies, retries on RQ,
a slow or dead receiver never in the way of a reply, and the URL guard shared with tools."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest

from gateway import events, safe_http
from gateway.api import schemas
from gateway.config import SettingsError, load_settings
from gateway.errors import TransientError
from gateway.storage.models import Agent, Chat
from tests.conftest import GATEWAY_API_KEY, post_twilio, wait_for
from tests.fakes.drip import DripServer
from tests.fakes.receiver import Receiver
from tests.payloads import OUR_NUMBER, PERSON, inbound_sms

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
SECRET = "whsec_0123456789abcdef"
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_verify():
    """The signature check exactly as README.md shows it (its ```python block defining verify)."""
    text = README.read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify(" in block]
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the README's own example, run as a receiver would
    return namespace["verify"]


@pytest.fixture
def receiver():
    """A loopback webhook receiver."""
    with Receiver() as server:
        yield server
        server.release()


@pytest.fixture
def settings(settings):
    """The tests' receivers listen on loopback, so private URLs are allowed here."""
    return settings.model_copy(update={"allow_private_urls": True})


def create_agent(client, **fields) -> dict:
    """POST /v1/agents; the created agent."""
    response = client.post("/v1/agents", json=fields, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def deliveries(client, agent_id: str) -> dict:
    """GET the agent's webhook deliveries."""
    response = client.get(f"/v1/agents/{agent_id}/webhook-deliveries", headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_event_names_agree_with_the_api():
    assert set(schemas.EventName.__args__) == set(events.EVENTS)


def test_the_secret_is_write_only(client, receiver):
    agent = create_agent(client, webhook_url=receiver.url + "/hooks", webhook_secret=SECRET)
    assert "webhook_secret" not in agent
    assert agent["webhook_secret_set"] is True and agent["webhook_events"] is None
    fetched = client.get(f"/v1/agents/{agent['agent_id']}", headers=AUTH).get_json()
    assert "webhook_secret" not in fetched and fetched["webhook_secret_set"] is True
    refused = client.post(
        "/v1/agents", json={"webhook_events": ["chat_started", "chat_started"]}, headers=AUTH
    )
    assert refused.status_code == 422
    assert client.post("/v1/agents", json={"webhook_url": "ftp://x"}, headers=AUTH).status_code == 422


def test_nothing_is_sent_unsigned(client, app, settings_with, receiver):
    """A webhook_url or a function tool needs a secret to sign with: the agent's own, else
    EVENTS_WEBHOOK_SECRET; and the gateway-wide URL needs the gateway-wide secret."""
    tool = {"type": "function", "name": "lookup", "url": receiver.url + "/tool"}
    for fields in ({"webhook_url": receiver.url}, {"tools": [tool]}):
        refused = client.post("/v1/agents", json=fields, headers=AUTH)
        assert refused.status_code == 422, fields
        error = refused.get_json()["error"]
        assert error["field"] == "webhook_secret" and "signed" in error["message"]
    agent = create_agent(client, webhook_url=receiver.url, tools=[tool], webhook_secret=SECRET)
    path = f"/v1/agents/{agent['agent_id']}"
    cleared = client.patch(path, json={"webhook_secret": None}, headers=AUTH)
    assert cleared.status_code == 422 and cleared.get_json()["error"]["field"] == "webhook_secret"
    assert client.patch(path, json={"name": "Still signed"}, headers=AUTH).status_code == 200
    # With the gateway-wide secret, an agent may go without its own.
    app.config["SETTINGS"] = settings_with(allow_private_urls=True, events_webhook_secret=SECRET)
    assert client.patch(path, json={"webhook_secret": None}, headers=AUTH).status_code == 200
    assert create_agent(client, webhook_url=receiver.url)["webhook_secret_set"] is False

    with pytest.raises(SettingsError, match="EVENTS_WEBHOOK_SECRET"):
        load_settings({"EVENTS_WEBHOOK_URL": "https://hooks.example.com/"}, dotenv_path=None)
    both = {"EVENTS_WEBHOOK_URL": "https://hooks.example.com/", "EVENTS_WEBHOOK_SECRET": SECRET}
    assert load_settings(both, dotenv_path=None).events_webhook_secret == SECRET


def test_an_agent_left_without_a_secret_gets_no_delivery(client, worker, receiver):
    """An agent stored before secrets were required (or settings changed since): the delivery is
    not sent, and the attempts log says why."""
    agent = create_agent(client, webhook_url=receiver.url, webhook_secret=SECRET)
    Agent.update(webhook_secret=None).where(Agent.agent_id == agent["agent_id"]).execute()
    client.post("/v1/chats", json={"agent_id": agent["agent_id"], "user_id": "u3"}, headers=AUTH)

    [attempt] = wait_for(lambda: deliveries(client, agent["agent_id"])["attempts"], 30)
    assert attempt["event"] == "chat_started" and attempt["outcome"] == "refused"
    assert "no secret to sign it with" in attempt["error"] and attempt["status_code"] is None
    assert receiver.requests == []


def test_api_chat_events_arrive_signed_and_verify_with_the_readme_example(
    client, worker, fake_model, receiver
):
    verify = readme_verify()
    fake_model.reply_with('{"chat_summary": "Hi.", "user_sentiment": "neutral", "chat_successful": true}')
    agent = create_agent(client, webhook_url=receiver.url + "/hooks?src=smsgw", webhook_secret=SECRET)
    chat = client.post(
        "/v1/chats", json={"agent_id": agent["agent_id"], "user_id": "u1"}, headers=AUTH
    ).get_json()
    client.post(f"/v1/chats/{chat['chat_id']}/completions", json={"content": "hello"}, headers=AUTH)
    assert client.post(f"/v1/chats/{chat['chat_id']}/end", headers=AUTH).status_code == 200

    requests = receiver.wait_for_requests(3)
    wait_for(
        lambda: {b["event"] for b in receiver.bodies()} >= {"chat_started", "chat_ended", "chat_analyzed"}
    )
    for request in receiver.requests:
        assert request.path == "/hooks" and request.query == {"src": ["smsgw"]}
        assert verify(SECRET, request.headers["x-smsgw-signature"], request.body)
        assert not verify("another-secret-entirely", request.headers["x-smsgw-signature"], request.body)
        assert not verify(SECRET, request.headers["x-smsgw-signature"], request.body + b" ")
    analyzed = next(b for b in receiver.bodies() if b["event"] == "chat_analyzed")
    assert analyzed["chat"]["chat_id"] == chat["chat_id"]
    assert analyzed["chat"]["chat_analysis"]["chat_summary"] == "Hi."
    # A replayed delivery with an old timestamp is refused by the same check.
    old = events.sign(SECRET, requests[0].body, int(time.time()) - 3600)
    assert not verify(SECRET, old, requests[0].body)

    log = wait_for(lambda: (d := deliveries(client, agent["agent_id"]))["attempts"][2:] and d)
    assert log["url"] == receiver.url + "/hooks?src=smsgw"
    assert {a["event"] for a in log["attempts"]} == {"chat_started", "chat_ended", "chat_analyzed"}
    assert all(a["outcome"] == "delivered" and a["status_code"] == 200 for a in log["attempts"])


def test_ending_a_chat_in_the_console_sends_chat_ended(client, worker, receiver):
    """The console's End chat tells the agent's webhook, as the API's End chat does."""
    from tests.test_console import csrf_from, sign_in

    agent = create_agent(
        client, webhook_url=receiver.url + "/hooks", webhook_secret=SECRET, webhook_events=["chat_ended"]
    )
    chat = client.post(
        "/v1/chats", json={"agent_id": agent["agent_id"], "user_id": "u2"}, headers=AUTH
    ).get_json()
    sign_in(client)
    page = client.get(f"/console/chats/{chat['chat_id']}").get_data(as_text=True)
    ended = client.post(f"/console/chats/{chat['chat_id']}/end", data={"csrf_token": csrf_from(page)})
    assert ended.status_code == 302
    wait_for(lambda: [b for b in receiver.bodies() if b["event"] == "chat_ended"], message="chat_ended")
    [body] = receiver.bodies()
    assert body["chat"]["chat_id"] == chat["chat_id"] and body["chat"]["end_reason"] == "operator"


def test_a_failing_receiver_is_retried_and_sms_events_use_the_gateway_default(
    client, app, worker, fake_model, fake_twilio, receiver
):
    # The gateway-wide default endpoint; the default agent opts in to per-message events.
    settings = app.config["SETTINGS"]
    worker.stop()
    worker.settings = settings.model_copy(
        update={"events_webhook_url": receiver.url, "events_webhook_secret": SECRET}
    )
    worker.start()
    app.config["SETTINGS"] = worker.settings
    client.patch(
        "/v1/agents/agent_default",
        json={"webhook_events": ["chat_started", "message_received", "message_status"]},
        headers=AUTH,
    )
    receiver.answer_next(503)  # the first delivery fails, its retry gets through
    fake_model.reply_with("Hello!")

    assert post_twilio(client, "/twilio/sms", inbound_sms("hi there")).status_code == 200

    wait_for(lambda: {b["event"] for b in receiver.bodies()} >= {"chat_started", "message_received"}, 30)
    received = next(b for b in receiver.bodies() if b["event"] == "message_received")
    assert received["message"]["content"] == "hi there"
    assert (received["chat"]["from_number"], received["chat"]["to_number"]) == (OUR_NUMBER, PERSON)
    retried = wait_for(
        lambda: [a for a in deliveries(client, "agent_default")["attempts"] if a["attempt"] == 2], 30
    )
    assert retried[0]["outcome"] == "delivered"
    attempts = deliveries(client, "agent_default")["attempts"]
    assert [a["status_code"] for a in attempts if a["outcome"] == "failed"] == [503]
    assert all(a["event"] != "chat_ended" for a in attempts)  # not subscribed
    [sent] = fake_twilio.wait_for_messages(1, timeout=30)
    assert sent["Body"] == "Hello!"


def test_a_slow_or_dead_receiver_never_delays_a_reply(client, worker, fake_model, fake_twilio, receiver):
    receiver.hold()  # answers nothing until released
    agent = create_agent(
        client, webhook_url=receiver.url, webhook_secret=SECRET, webhook_events=["message_received"]
    )
    client.post(
        "/v1/phone-numbers",
        json={"phone_number": OUR_NUMBER, "inbound_agent_id": agent["agent_id"]},
        headers=AUTH,
    )
    fake_model.reply_with("On it.")

    post_twilio(client, "/twilio/sms", inbound_sms("first"))
    receiver.wait_for_requests(1)
    [sent] = fake_twilio.wait_for_messages(1, timeout=30)  # answered while the receiver hangs
    assert sent["Body"] == "On it."

    dead = "http://127.0.0.1:9/"  # nothing listens on the discard port
    client.patch(f"/v1/agents/{agent['agent_id']}", json={"webhook_url": dead}, headers=AUTH)
    post_twilio(client, "/twilio/sms", inbound_sms("second"))
    fake_twilio.wait_for_messages(2, timeout=30)
    failed = wait_for(lambda: deliveries(client, agent["agent_id"])["attempts"], 30)
    assert failed[0]["outcome"] == "failed" and failed[0]["status_code"] is None
    assert "127.0.0.1" in failed[0]["error"]
    assert Chat.select().count() == 1


def restart_worker(worker, app, **changes) -> None:
    """Run the worker (and the app) on changed settings."""
    worker.stop()
    worker.settings = worker.settings.model_copy(update=changes)
    worker.start()
    app.config["SETTINGS"] = worker.settings


def test_deliveries_hanging_on_a_dead_receiver_leave_the_threads_to_replies(
    client, app, worker, fake_model, fake_twilio, receiver
):
    """A flood of deliveries to a receiver that never answers (each holds a thread until its
    timeout) takes at most a quarter of the worker's threads: a text's reply goes out meanwhile."""
    restart_worker(worker, app, worker_concurrency=8)
    cap = events.delivery_concurrency(worker.settings)
    assert cap == 2
    receiver.hold()  # takes each delivery and answers nothing
    agent = create_agent(client, webhook_url=receiver.url, webhook_secret=SECRET)
    chat = client.post(
        "/v1/chats", json={"agent_id": agent["agent_id"], "user_id": "u4"}, headers=AUTH
    ).get_json()
    for _ in range(30):  # as many message_status events would
        events.emit(app.task_queue, worker.settings, events.CHAT_STARTED, chat["chat_id"])
    receiver.wait_for_requests(cap)
    fake_model.reply_with("On it.")

    assert post_twilio(client, "/twilio/sms", inbound_sms("hello")).status_code == 200  # the default agent
    [sent] = fake_twilio.wait_for_messages(1, timeout=30)

    assert sent["Body"] == "On it."
    # It went out while the first deliveries still hung: none has ended, and no other was started.
    assert deliveries(client, agent["agent_id"])["attempts"] == []
    assert len(receiver.requests) == cap


def test_retries_stop_and_the_last_attempt_is_recorded_as_given_up(
    client, app, worker, receiver, monkeypatch
):
    from rq.registry import FailedJobRegistry

    from tests.fakes.http import Response

    monkeypatch.setattr(events, "DELIVERY_RETRY_INTERVALS", [1, 1])  # as queued here: 3 attempts in all
    receiver.answer = lambda request: Response.json(503, {"error": "down for maintenance"})
    agent = create_agent(
        client, webhook_url=receiver.url, webhook_secret=SECRET, webhook_events=["chat_started"]
    )
    client.post("/v1/chats", json={"agent_id": agent["agent_id"], "user_id": "u5"}, headers=AUTH)

    def given_up() -> list | None:
        attempts = deliveries(client, agent["agent_id"])["attempts"]
        return attempts if attempts and attempts[0]["outcome"] == "gave_up" else None

    attempts = wait_for(given_up, 60, message="the delivery given up")
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in attempts] == [
        (3, "gave_up", 503),
        (2, "failed", 503),
        (1, "failed", 503),
    ]
    # No attempt follows: the job has failed for good.
    wait_for(lambda: FailedJobRegistry(queue=app.task_queue).count, 30, message="the job failed")
    assert len(receiver.requests) == 3
    assert len(deliveries(client, agent["agent_id"])["attempts"]) == 3


# --- the URL guard ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
    ],
)
def test_only_public_addresses_pass_the_guard(address, public):
    assert safe_http.address_is_public(address) is public


def test_the_guard_refuses_loopback_unless_private_urls_are_allowed(receiver):
    with pytest.raises(safe_http.UnsafeURL, match="ALLOW_PRIVATE_URLS"):
        safe_http.post(receiver.url, b"{}", headers={}, timeout=5, allow_private=False)
    with pytest.raises(safe_http.UnsafeURL, match="ALLOW_PRIVATE_URLS"):
        safe_http.post(
            f"http://localhost:{receiver.port}/", b"{}", headers={}, timeout=5, allow_private=False
        )
    with pytest.raises(safe_http.UnsafeURL, match="user name or password"):
        safe_http.post("http://u:p@example.com/", b"{}", headers={}, timeout=5, allow_private=False)
    assert not receiver.requests
    answer = safe_http.post(receiver.url + "/x", b"{}", headers={}, timeout=5, allow_private=True)
    assert answer.status == 200 and receiver.requests[0].path == "/x"
    assert receiver.requests[0].headers["host"] == f"127.0.0.1:{receiver.port}"


def test_answers_are_capped_and_redirects_not_followed(receiver):
    from tests.fakes.http import Response

    receiver.answer = lambda request: Response(200, b"x" * 100_000, "text/plain")
    answer = safe_http.post(receiver.url, b"", headers={}, timeout=5, allow_private=True, max_bytes=1000)
    assert (len(answer.body), answer.truncated) == (1000, True)
    receiver.answer = lambda request: Response(
        302, b"", "text/plain", {"Location": "http://169.254.169.254/"}
    )
    assert safe_http.post(receiver.url, b"", headers={}, timeout=5, allow_private=True).status == 302
    assert len(receiver.requests) == 2


def test_a_dead_endpoint_is_a_transient_error():
    with pytest.raises(TransientError):
        safe_http.post("http://127.0.0.1:9/", b"", headers={}, timeout=2, allow_private=True)


def test_a_dripping_server_is_cut_off_at_the_deadline():
    """Headers at once, then a byte a second: each read is quick, so only a deadline on the whole
    call stops it (a per-read timeout would wait for all 1,000 bytes)."""
    with DripServer() as server:
        started = time.monotonic()
        with pytest.raises(TransientError) as raised:
            safe_http.post(server.url, b"{}", headers={}, timeout=1.5, allow_private=True)
        took = time.monotonic() - started
        assert server.connections == 1
    assert raised.value.code == "timeout" and "timed out" in raised.value.reason
    assert took < 1.5 + 5  # ended by its deadline, not by the body's end (over 16 minutes away)


def test_a_dns_lookup_that_outlasts_the_deadline_is_a_timeout(monkeypatch):
    unblock = threading.Event()

    def hanging_lookup(*args, **kwargs):
        unblock.wait(30)
        raise socket.gaierror("gave up")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    try:
        started = time.monotonic()
        with pytest.raises(TransientError) as raised:
            safe_http.post("http://tools.example.com/x", b"{}", headers={}, timeout=0.5, allow_private=False)
        assert time.monotonic() - started < 0.5 + 5
        assert raised.value.code == "timeout" and "tools.example.com" in raised.value.reason
    finally:
        unblock.set()


def test_dns_is_resolved_once_and_the_vetted_address_connected_to(monkeypatch, receiver):
    """DNS rebinding: the name's first answer is public, every later one loopback. The guard vets
    the first, and the connection goes to that address, never to a second lookup's."""
    import urllib3.util.connection

    public = "93.184.216.34"
    lookups: list[str] = []
    connected_to: list[tuple[str, int]] = []

    def rebinding_lookup(host, port, *args, **kwargs):
        lookups.append(host)
        address = public if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    def recording_connect(address, *args, **kwargs):
        connected_to.append(address)
        # Stand in for the public host: this test's loopback receiver answers for it (a bare
        # connect to a literal address, so no lookup of the test's own is recorded).
        sock = socket.socket()
        sock.settimeout(5)
        sock.connect(("127.0.0.1", receiver.port))
        return sock

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_lookup)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", recording_connect)

    answer = safe_http.post(
        "http://hooks.example.com/events", b"{}", headers={}, timeout=5, allow_private=False
    )

    assert answer.status == 200  # nothing refused: the vetted answer was public
    assert lookups == ["hooks.example.com"]  # resolved once
    assert connected_to == [(public, 80)]  # to the vetted address, not a later (loopback) answer
    [request] = receiver.requests
    assert request.headers["host"] == "hooks.example.com" and request.path == "/events"
