"""Agent tools: the tool-call loop against the fake model and loopback tool servers, signed calls a
receiver written from the README verifies, the URL guard, end_chat and handoff_to_human from the
model on SMS chats through a real worker, and tool calls shown, counted and paid for."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from gateway import metrics
from gateway.agent import spend, tools
from gateway.conversations import answering, replies
from gateway.queue import redis_for
from gateway.storage.models import Agent, Chat, Message, utcnow
from tests.conftest import GATEWAY_API_KEY, post_twilio, wait_for
from tests.fakes.drip import DripServer
from tests.fakes.http import Response
from tests.fakes.model import content_text, count_tokens, tool_results
from tests.fakes.receiver import Receiver
from tests.payloads import PERSON, WHATSAPP_OUR, WHATSAPP_PERSON, inbound_sms, inbound_whatsapp
from tests.test_console import csrf_from, sign_in
from tests.test_events import readme_verify
from tests.test_reply_job import inbound, make_chat

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
SECRET = "whsec_tools_0123456789abcdef"
LOOKUP_PARAMETERS = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}},
    "required": ["order_id"],
}


def serving():
    """A loopback Receiver for the test's length (released at the end, should it hold requests)."""
    with Receiver() as server:
        yield server
        server.release()


@pytest.fixture
def tool_server():
    """A loopback tool endpoint (records each call; answers JSON)."""
    yield from serving()


@pytest.fixture
def receiver():
    """A loopback event webhook receiver."""
    yield from serving()


@pytest.fixture
def settings(settings, tmp_path):
    """The tests' own tool servers listen on loopback, so private URLs are allowed here; the worker
    writes its metrics to this test's own directory."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    return settings.model_copy(
        update={"allow_private_urls": True, "prometheus_multiproc_dir": str(metrics_dir)}
    )


def function_tool(server: Receiver, name: str = "lookup_order", **fields) -> dict:
    """A function tool posting to the test's server."""
    return {
        "type": "function",
        "name": name,
        "description": "Look an order up by its id.",
        "parameters": LOOKUP_PARAMETERS,
        "url": f"{server.url}/tools/{name}",
        **fields,
    }


def agent_with(*tool_list: dict, agent_id: str = "agent_tools") -> Agent:
    """An agent (not stored: the loop reads only its fields) with these tools."""
    return Agent(agent_id=agent_id, tools=list(tool_list), webhook_secret=SECRET, max_tokens=200)


PROMPT = [
    {"role": "system", "content": "You help with orders."},
    {"role": "user", "content": "Where is 981?"},
]


def turn(settings, agent: Agent, prompt: list[dict] = PROMPT) -> tools.ToolRun:
    """One turn of an (unstored) chat with the agent, through the "answer this chat" service."""
    chat = Chat(
        chat_id="chat_t1", agent=agent, metadata={"crm_id": "c-7"}, dynamic_variables={"customer": "Ada"}
    )
    return answering.answer_with_tools(settings, agent, chat, prompt)


def samples(agent_id: str) -> dict[tuple[str, str], float]:
    """This process's smsgw_tool_calls_total counts of one agent: {(tool, outcome): count}."""
    counter = metrics._metrics["tool_calls"]
    found = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("agent") == agent_id and sample.value:
                found[(sample.labels["tool"], sample.labels["outcome"])] = sample.value
    return found


def counted_since(before: dict[tuple[str, str], float], agent_id: str) -> dict[tuple[str, str], float]:
    """The tool calls of an agent counted since `before` (a `samples` of it)."""
    now = samples(agent_id)
    return {key: now[key] - before.get(key, 0) for key in now if now[key] != before.get(key, 0)}


def worker_samples(settings, name: str, **labels: str) -> float:
    """A metric as the worker process wrote it (its multiprocess files), summed over matching samples."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics.metrics_directory(settings))
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


# --- the contract ---------------------------------------------------------------------------------


def test_tools_are_part_of_the_agent_and_validated(client, tool_server):
    tool_list = [function_tool(tool_server), {"type": "end_chat"}, {"type": "handoff_to_human"}]
    created = client.post(
        "/v1/agents", json={"agent_id": "agent_t", "tools": tool_list, "webhook_secret": SECRET}, headers=AUTH
    )
    assert created.status_code == 201, created.get_json()
    shown = created.get_json()["tools"]
    assert shown[0] == {**tool_list[0], "timeout_ms": tools.DEFAULT_TIMEOUT_MS}
    assert shown[1:] == [{"type": "end_chat"}, {"type": "handoff_to_human"}]
    assert client.get("/v1/agents/agent_t", headers=AUTH).get_json()["tools"] == shown
    assert client.post("/v1/agents", json={}, headers=AUTH).get_json()["tools"] == []

    refusals = [
        ([{"type": "end_chat"}, {"type": "end_chat"}], "tools", "listed twice"),
        ([function_tool(tool_server), function_tool(tool_server)], "tools", "listed twice"),
        ([function_tool(tool_server, name="end_chat")], "tools[0].name", "built-in"),
        ([function_tool(tool_server, name="look up")], "tools[0].name", "pattern"),
        ([function_tool(tool_server, url="ftp://example.com/x")], "tools[0].url", ""),
        ([function_tool(tool_server, url="https://u:p@example.com/x")], "tools[0].url", ""),
        ([function_tool(tool_server, timeout_ms=60_000)], "tools[0].timeout_ms", "30000"),
        ([function_tool(tool_server, timeout_ms=10)], "tools[0].timeout_ms", "100"),
        (
            [function_tool(tool_server, parameters={"type": "string"})],
            "tools[0].parameters",
            "object",
        ),
        ([{"type": "function", "name": "x"}], "tools[0].url", "required"),
        ([{"type": "send_money"}], "tools[0]", ""),
        ([{"type": "end_chat", "url": "https://example.com"}], "tools[0].url", ""),
        (
            [{"type": "end_chat"}] + [function_tool(tool_server, name=f"t{i}") for i in range(20)],
            "tools",
            "20",
        ),
    ]
    for bad, field, words in refusals:
        response = client.patch("/v1/agents/agent_t", json={"tools": bad}, headers=AUTH)
        assert response.status_code == 422, bad
        error = response.get_json()["error"]
        assert error["field"] == field and words in error["message"], (bad, error)
    assert client.get("/v1/agents/agent_t", headers=AUTH).get_json()["tools"] == shown  # unchanged


def test_the_openapi_document_declares_tools_and_tool_calls(client):
    doc = client.get("/v1/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    agent = schemas["Agent"]["properties"]["tools"]
    assert "items" in agent
    assert "tool_calls" in schemas["Message"]["properties"]
    assert set(schemas["ToolCallRecord"]["required"]) >= {"id", "name", "arguments", "outcome", "result"}


def test_the_console_form_edits_tools(client, tool_server):
    from gateway.console.agents import form_fields, shown_value
    from gateway.conversations.agents import default_agent

    [field] = [f for f in form_fields() if f["name"] == "tools"]
    assert field["kind"] == "json"
    sign_in(client)
    page = client.get("/console/agents/agent_default").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page)}
    agent = default_agent()
    for f in form_fields():  # the form as the browser posts it
        value = shown_value(agent, f)
        if f["kind"] == "checkbox":
            if value:
                form[f["name"]] = "on"
        elif f["kind"] == "secret":
            form[f["name"]] = ""  # a write-only field: shown empty, kept when left empty
        else:
            form[f["name"]] = "" if value is None else str(value)

    form["tools"] = json.dumps([{"type": "end_chat"}, function_tool(tool_server, name="look up")])
    refused = client.post("/console/agents/agent_default", data=form)
    assert refused.status_code == 422 and "tools[1].name" in refused.get_data(as_text=True)

    form["tools"] = json.dumps([{"type": "end_chat"}, function_tool(tool_server)])
    unsigned = client.post("/console/agents/agent_default", data=form)  # a function needs a secret
    assert unsigned.status_code == 422 and "webhook_secret" in unsigned.get_data(as_text=True)

    form["webhook_secret"] = SECRET
    saved = client.post("/console/agents/agent_default", data=form)
    assert saved.status_code == 302
    assert [t["type"] for t in Agent.get_by_id("agent_default").tools] == ["end_chat", "function"]


# --- the loop -------------------------------------------------------------------------------------


def test_one_tool_signed_answer_given_back_to_the_model(app, settings, fake_model, tool_server):
    verify = readme_verify()

    def answer(request):
        """The tool server checks the signature as the README shows, and refuses a forgery."""
        if not verify(SECRET, request.headers.get("x-smsgw-signature", ""), request.body):
            return Response.json(401, {"error": "bad signature"})
        return Response.json(200, {"status": "shipped", "eta": "tomorrow"})

    tool_server.answer = answer
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_replies(["Order 981 arrives tomorrow."])
    agent = agent_with(function_tool(tool_server), agent_id="agent_one_tool")
    before = samples("agent_one_tool")  # this process counts across tests and backends

    run = turn(settings, agent)

    assert run.completion.text == "Order 981 arrives tomorrow." and run.action is None
    [call] = tool_server.requests
    assert call.path == "/tools/lookup_order"
    assert verify(SECRET, call.headers["x-smsgw-signature"], call.body)
    assert json.loads(call.body) == {
        "tool": "lookup_order",
        "arguments": {"order_id": "981"},
        "chat": {
            "chat_id": "chat_t1",
            "agent_id": "agent_one_tool",
            "metadata": {"crm_id": "c-7"},
            "dynamic_variables": {"customer": "Ada"},
        },
    }
    first, second = fake_model.requests
    assert first["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in first["tools"]] == ["lookup_order"]
    assert first["tools"][0]["function"]["parameters"] == LOOKUP_PARAMETERS
    assistant = second["messages"][-2]
    assert (
        assistant["role"] == "assistant" and assistant["tool_calls"][0]["function"]["name"] == "lookup_order"
    )
    assert tool_results(second) == {
        assistant["tool_calls"][0]["id"]: '{"status": "shipped", "eta": "tomorrow"}'
    }
    [record] = run.calls
    assert record["outcome"] == "ok" and record["status_code"] == 200 and record["round"] == 1
    assert record["arguments"] == {"order_id": "981"}
    # Both rounds' tokens are the answer's (the fake counts words).
    assert run.completion.completion_tokens == 3 + 4
    assert run.completion.prompt_tokens == prompt_tokens(fake_model)
    assert counted_since(before, "agent_one_tool") == {("lookup_order", "ok"): 1}


def test_two_tools_in_a_row(app, settings, fake_model, tool_server):
    tool_server.answer = lambda request: Response.json(200, {"echo": json.loads(request.body)["tool"]})
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_tool_calls(("book_slot", {"day": "friday"}), ("lookup_order", {"order_id": "982"}))
    fake_model.queue_replies(["Booked Friday; both orders are on their way."])
    agent = agent_with(function_tool(tool_server), function_tool(tool_server, name="book_slot"))

    run = turn(settings, agent)

    assert run.completion.text == "Booked Friday; both orders are on their way."
    assert [r.path for r in tool_server.requests] == [
        "/tools/lookup_order",
        "/tools/book_slot",
        "/tools/lookup_order",
    ]
    assert [(c["name"], c["round"]) for c in run.calls] == [
        ("lookup_order", 1),
        ("book_slot", 2),
        ("lookup_order", 2),
    ]
    third = fake_model.requests[2]
    assert sorted(tool_results(third).values()) == sorted(
        ['{"echo": "lookup_order"}', '{"echo": "book_slot"}', '{"echo": "lookup_order"}']
    )


def test_a_tool_that_times_out_is_an_error_for_the_model(app, settings, fake_model, tool_server):
    tool_server.hold()  # never answers in time
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_replies(["Sorry, I can't look that up right now."])
    agent = agent_with(function_tool(tool_server, timeout_ms=300), agent_id="agent_slow_tool")
    before = samples("agent_slow_tool")  # this process counts across tests and backends

    run = turn(settings, agent)
    tool_server.release()

    assert run.completion.text == "Sorry, I can't look that up right now."
    [record] = run.calls
    assert record["outcome"] == "timeout" and record["status_code"] is None
    told = json.loads(next(iter(tool_results(fake_model.requests[1]).values())))
    assert "timed out" in told["error"]
    assert counted_since(before, "agent_slow_tool") == {("lookup_order", "timeout"): 1}


def test_a_tool_that_drips_its_answer_times_out_at_its_timeout_ms(app, settings, fake_model):
    """Headers at once, then a byte a second: the call still ends at the tool's timeout_ms (the
    whole call, not each read), and the model is told it timed out."""
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_replies(["Sorry, the order system is slow right now."])
    with DripServer() as server:
        tool = {
            "type": "function",
            "name": "lookup_order",
            "parameters": LOOKUP_PARAMETERS,
            "url": server.url + "/tools/lookup_order",
            "timeout_ms": 1500,
        }
        run = turn(settings, agent_with(tool, agent_id="agent_drip_tool"))

    assert run.completion.text == "Sorry, the order system is slow right now."
    [record] = run.calls
    assert record["outcome"] == "timeout" and record["status_code"] is None
    assert record["duration_ms"] < 1500 + 5000  # cut off near timeout_ms, not after 1,000 bytes
    told = json.loads(next(iter(tool_results(fake_model.requests[1]).values())))
    assert "timed out" in told["error"]


def test_the_tools_of_a_turn_share_one_time_budget(app, settings, fake_model, tool_server, monkeypatch):
    monkeypatch.setattr(tools, "TURN_TOOL_SECONDS", 0.3)
    tool_server.hold()  # never answers in time
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "982"}))
    fake_model.queue_replies(["I can't check orders right now."])
    agent = agent_with(function_tool(tool_server, timeout_ms=20_000))

    run = turn(settings, agent)
    tool_server.release()

    assert run.completion.text == "I can't check orders right now."
    assert [r["outcome"] for r in run.calls] == ["timeout", "timeout"]
    assert "used up" in json.loads(run.calls[1]["result"])["error"]
    # The second call was never made. The first may not have reached the server either: on a
    # loaded machine 0.3 s can pass before its request is read, so at most one arrived.
    assert len(tool_server.requests) <= 1
    assert all(json.loads(r.body)["arguments"] == {"order_id": "981"} for r in tool_server.requests)


def test_a_loopback_tool_url_is_refused_unless_private_urls_are_allowed(
    app, settings, fake_model, tool_server
):
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_replies(["I could not check."])
    agent = agent_with(function_tool(tool_server), agent_id="agent_guarded")
    before = samples("agent_guarded")  # this process counts across tests and backends

    run = turn(settings.model_copy(update={"allow_private_urls": False}), agent)

    assert run.completion.text == "I could not check."
    assert tool_server.requests == []  # never called
    [record] = run.calls
    assert record["outcome"] == "refused"
    assert "ALLOW_PRIVATE_URLS" in json.loads(record["result"])["error"]
    assert counted_since(before, "agent_guarded") == {("lookup_order", "refused"): 1}


def test_a_tool_of_an_agent_without_a_secret_is_not_called(app, settings, fake_model, tool_server):
    """Every call is signed: an agent stored before that rule, with no secret of its own and none
    gateway-wide, has its calls refused, not sent unsigned."""
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_replies(["I could not check."])
    agent = agent_with(function_tool(tool_server), agent_id="agent_unsigned")
    agent.webhook_secret = None

    run = turn(settings, agent)

    assert run.completion.text == "I could not check."
    assert tool_server.requests == []
    [record] = run.calls
    assert record["outcome"] == "refused" and "secret" in json.loads(record["result"])["error"]


def test_failing_unknown_and_malformed_calls_are_errors_for_the_model(app, settings, fake_model, tool_server):
    tool_server.answer_next(500)
    fake_model.queue_tool_calls(
        ("lookup_order", {"order_id": "1"}), ("no_such_tool", {}), ("lookup_order", "{not json")
    )
    fake_model.queue_replies(["Something went wrong."])
    agent = agent_with(function_tool(tool_server))

    run = turn(settings, agent)

    assert run.completion.text == "Something went wrong."
    assert [r["outcome"] for r in run.calls] == ["error", "unknown_tool", "bad_arguments"]
    assert run.calls[0]["status_code"] == 500 and "HTTP 500" in run.calls[0]["result"]
    assert len(tool_server.requests) == 1
    assert all("error" in json.loads(text) for text in tool_results(fake_model.requests[1]).values())


def test_rounds_are_bounded_then_the_model_must_answer_in_text(app, settings, fake_model, tool_server):
    for _ in range(tools.MAX_ROUNDS + 1):
        fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_replies(["Here is what I found."])
    agent = agent_with(function_tool(tool_server))

    run = turn(settings, agent)

    assert run.completion.text == "Here is what I found."
    assert len(tool_server.requests) == tools.MAX_ROUNDS
    assert [r.get("tool_choice") for r in fake_model.requests] == ["auto"] * tools.MAX_ROUNDS + ["none"]


def test_built_ins_end_the_loop(app, settings, fake_model):
    agent = agent_with({"type": "end_chat"}, {"type": "handoff_to_human"})
    fake_model.queue_tool_calls(("end_chat", {"closing_text": "Bye, Ada!"}))
    run = turn(settings, agent)
    assert run.completion.text == "Bye, Ada!" and run.action == "end_chat"
    assert tools.requested_action(run.calls)["name"] == "end_chat"

    fake_model.queue_tool_calls(
        ("handoff_to_human", {"reason": "billing"}), content="A colleague will text you."
    )
    run = turn(settings, agent)
    assert run.completion.text == "A colleague will text you." and run.action == "handoff_to_human"
    assert len(fake_model.requests) == 2  # no follow-up round after a built-in


def test_without_tools_the_request_offers_none(app, settings, fake_model):
    fake_model.reply_with("Plain answer.")
    run = turn(settings, agent_with())
    assert run.completion.text == "Plain answer." and run.calls == []
    assert "tools" not in fake_model.requests[0]


# --- API chats ------------------------------------------------------------------------------------


def test_api_chat_tool_calls_are_stored_shown_and_counted(client, settings, fake_model, tool_server):
    tool_server.answer = lambda request: Response.json(200, {"status": "shipped"})
    client.post(
        "/v1/agents",
        json={"agent_id": "agent_api_tools", "tools": [function_tool(tool_server)], "webhook_secret": SECRET},
        headers=AUTH,
    )
    chat = client.post("/v1/chats", json={"agent_id": "agent_api_tools", "metadata": {"k": 1}}, headers=AUTH)
    chat_id = chat.get_json()["chat_id"]
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_replies(["It has shipped."])

    answered = client.post(
        f"/v1/chats/{chat_id}/completions", json={"content": "Where is 981?"}, headers=AUTH
    )

    assert answered.status_code == 200, answered.get_json()
    [message] = answered.get_json()["messages"]
    assert message["content"] == "It has shipped."
    assert [c["name"] for c in message["tool_calls"]] == ["lookup_order"]
    assert json.loads(tool_server.requests[0].body)["chat"]["metadata"] == {"k": 1}
    detail = client.get(f"/v1/chats/{chat_id}", headers=AUTH).get_json()
    user, agent = detail["messages"]
    assert user["tool_calls"] is None and agent["tool_calls"] == message["tool_calls"]
    assert agent["tool_calls"][0]["result"] == '{"status": "shipped"}'
    assert detail["usage"] == {"prompt_tokens": prompt_tokens(fake_model), "completion_tokens": 3 + 3}
    sign_in(client)
    page = client.get(f"/console/chats/{chat_id}").get_data(as_text=True)
    assert 'data-tool="lookup_order"' in page and "called <b>lookup_order</b>" in page
    usage = client.get("/v1/agents/agent_api_tools/usage", headers=AUTH).get_json()
    assert usage["tokens_today"] == prompt_tokens(fake_model) + 6  # both rounds in the spend counters


def prompt_tokens(fake_model) -> int:
    """The prompt tokens the fake model counted over every request so far (words of the messages)."""
    return sum(
        count_tokens(content_text(m.get("content")))
        for request in fake_model.requests
        for m in request["messages"]
    )


def test_api_chat_end_chat_ends_it(client, fake_model, receiver):
    client.post(
        "/v1/agents",
        json={
            "agent_id": "agent_closer",
            "tools": [{"type": "end_chat"}],
            "webhook_url": receiver.url,
            "webhook_secret": SECRET,
        },
        headers=AUTH,
    )
    chat_id = client.post("/v1/chats", json={"agent_id": "agent_closer"}, headers=AUTH).get_json()["chat_id"]
    fake_model.queue_tool_calls(("end_chat", {"closing_text": "Glad I could help. Bye!"}))

    answered = client.post(f"/v1/chats/{chat_id}/completions", json={"content": "thanks, bye"}, headers=AUTH)

    assert answered.get_json()["messages"][0]["content"] == "Glad I could help. Bye!"
    detail = client.get(f"/v1/chats/{chat_id}", headers=AUTH).get_json()
    assert (detail["chat_status"], detail["end_reason"]) == ("ended", "agent")
    again = client.post(f"/v1/chats/{chat_id}/completions", json={"content": "hello?"}, headers=AUTH)
    assert again.status_code == 409


# --- SMS chats through a real worker --------------------------------------------------------------


def sms_agent(client, receiver, tool_list) -> None:
    """Give the default agent (which answers our number) these tools and the test's event webhook."""
    response = client.patch(
        "/v1/agents/agent_default",
        json={"tools": tool_list, "webhook_url": receiver.url, "webhook_secret": SECRET},
        headers=AUTH,
    )
    assert response.status_code == 200, response.get_json()


def test_sms_tool_then_end_chat_through_the_worker(
    client, worker, fake_model, fake_twilio, tool_server, receiver
):
    verify = readme_verify()
    tool_server.answer = lambda request: Response.json(200, {"slot": "Friday 10:00"})
    sms_agent(client, receiver, [function_tool(tool_server, name="book_slot"), {"type": "end_chat"}])
    fake_model.queue_tool_calls(("book_slot", {"order_id": "981"}))
    fake_model.queue_tool_calls(("end_chat", {"closing_text": "Booked for Friday 10:00. Bye!"}))

    assert post_twilio(client, "/twilio/sms", inbound_sms("book me in please")).status_code == 200

    [sent] = fake_twilio.wait_for_messages(1)
    assert sent["Body"].startswith("Booked for Friday 10:00. Bye!") and sent["To"] == PERSON
    [call] = tool_server.requests
    assert verify(SECRET, call.headers["x-smsgw-signature"], call.body)
    chat = wait_for(
        lambda: Chat.get_or_none(Chat.end_reason == "agent"), message="the chat ended by the agent"
    )
    wait_for(
        lambda: {"chat_ended"} <= {b["event"] for b in receiver.bodies()}, message="chat_ended delivered"
    )
    detail = client.get(f"/v1/chats/{chat.chat_id}", headers=AUTH).get_json()
    agent_message = next(m for m in detail["messages"] if m["role"] == "agent")
    assert [(c["name"], c["outcome"]) for c in agent_message["tool_calls"]] == [
        ("book_slot", "ok"),
        ("end_chat", "ok"),
    ]
    # Both rounds: the call of book_slot (3 words) and the call of end_chat (7).
    assert detail["usage"]["completion_tokens"] == agent_message_tokens(chat.chat_id) == 3 + 7
    # The worker counted the calls, and the model's tokens by agent and model (the reply's two
    # rounds, and the post-chat analysis the ended chat gets, when it has run).
    settings = client.application.config["SETTINGS"]
    tool_calls = "smsgw_tool_calls_total"
    assert worker_samples(settings, tool_calls, agent="agent_default", tool="book_slot", outcome="ok") == 1
    assert worker_samples(settings, tool_calls, agent="agent_default", tool="end_chat", outcome="ok") == 1
    assert (
        worker_samples(
            settings, "smsgw_model_tokens_total", agent="agent_default", model="fake-model", kind="completion"
        )
        >= 3 + 7
    )
    assert (
        worker_samples(settings, "smsgw_model_call_seconds_count", agent="agent_default", model="fake-model")
        >= 2
    )
    # The next text opens a new chat.
    fake_model.reply_with("Hello again.")
    post_twilio(client, "/twilio/sms", inbound_sms("one more thing"))
    fake_twilio.wait_for_messages(2)
    assert Chat.select().count() == 2


def agent_message_tokens(chat_id: str) -> int:
    """The completion tokens stored on the chat's agent messages."""
    return sum(m.completion_tokens or 0 for m in Message.select().where(Message.chat == chat_id))


def test_sms_handoff_to_human_through_the_worker(client, worker, fake_model, fake_twilio, receiver):
    verify = readme_verify()
    sms_agent(client, receiver, [{"type": "handoff_to_human"}])
    fake_model.queue_tool_calls(
        ("handoff_to_human", {"reason": "asks for a refund"}), content="Let me get a colleague for you."
    )

    post_twilio(client, "/twilio/sms", inbound_sms("I want a refund NOW"))

    [sent] = fake_twilio.wait_for_messages(1)
    assert sent["Body"].startswith("Let me get a colleague for you.")
    chat = wait_for(lambda: Chat.get_or_none(Chat.operator_held_at.is_null(False)), message="the chat held")
    handoff = wait_for(
        lambda: [r for r in receiver.requests if json.loads(r.body)["event"] == "chat_handoff"]
    )[0]
    assert verify(SECRET, handoff.headers["x-smsgw-signature"], handoff.body)
    body = json.loads(handoff.body)
    assert body["chat"]["chat_id"] == chat.chat_id
    assert body["message"]["reason"] == "asks for a refund"
    assert body["message"]["content"].startswith("Let me get a colleague")
    detail = client.get(f"/v1/chats/{chat.chat_id}", headers=AUTH).get_json()
    assert detail["operator_held_at"] is not None and detail["chat_status"] == "ongoing"

    # Held: the agent does not answer the next text.
    post_twilio(client, "/twilio/sms", inbound_sms("hello??"))
    wait_for(
        lambda: Message.get_or_none((Message.content == "hello??") & (Message.reply_state == "none")),
        message="the next text marked as needing no reply",
    )
    assert len(fake_model.requests) == 1 and len(fake_twilio.messages) == 1


def test_sms_silent_handoff_sends_nothing_and_keeps_the_calls(
    client, worker, fake_model, fake_twilio, receiver
):
    sms_agent(client, receiver, [{"type": "handoff_to_human"}])
    fake_model.queue_tool_calls(("handoff_to_human", {"reason": "legal question"}))

    post_twilio(client, "/twilio/sms", inbound_sms("Can I sue you?"))

    chat = wait_for(lambda: Chat.get_or_none(Chat.operator_held_at.is_null(False)), message="the chat held")
    wait_for(
        lambda: "chat_handoff" in {b["event"] for b in receiver.bodies()}, message="chat_handoff delivered"
    )
    detail = client.get(f"/v1/chats/{chat.chat_id}", headers=AUTH).get_json()
    user, record = detail["messages"]
    assert user["reply_state"] == "none"
    assert record["role"] == "agent" and record["content"] == "" and record["kind"] == "notice"
    assert record["tool_calls"][0]["arguments"] == {"reason": "legal question"}
    assert fake_twilio.messages == []


def test_sms_end_chat_with_nothing_to_say_ends_it_silently(client, worker, fake_model, fake_twilio, receiver):
    sms_agent(client, receiver, [{"type": "end_chat"}])
    fake_model.queue_tool_calls(("end_chat", {"closing_text": ""}))

    post_twilio(client, "/twilio/sms", inbound_sms("ok bye"))

    chat = wait_for(
        lambda: Chat.get_or_none(Chat.end_reason == "agent"), message="the chat ended by the agent"
    )
    detail = client.get(f"/v1/chats/{chat.chat_id}", headers=AUTH).get_json()
    user, record = detail["messages"]
    assert user["reply_state"] == "none"
    assert (record["content"], record["kind"], record["tool_calls"][0]["name"]) == ("", "notice", "end_chat")
    assert fake_twilio.messages == []


def test_a_call_signed_with_another_secret_is_refused_by_the_tool(app, settings, fake_model, tool_server):
    verify = readme_verify()
    tool_server.answer = lambda request: Response.json(
        200 if verify(SECRET, request.headers.get("x-smsgw-signature", ""), request.body) else 401, {}
    )
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_replies(["I could not check."])
    agent = agent_with(function_tool(tool_server))
    agent.webhook_secret = "whsec_someone_else_0123456789"

    run = turn(settings, agent)

    assert [(r["outcome"], r["status_code"]) for r in run.calls] == [("error", 401)]


def test_spend_counts_every_round(app, settings, fake_model, tool_server):
    fake_model.queue_tool_calls(("lookup_order", {"order_id": "981"}))
    fake_model.queue_replies(["Done."])
    agent = agent_with(function_tool(tool_server), agent_id="agent_spender")

    run = turn(settings, agent)

    assert run.completion.prompt_tokens == prompt_tokens(fake_model)
    assert run.completion.completion_tokens == 3 + 1
    key = spend.agent_tokens_key(settings, "agent_spender", utcnow().strftime("%Y%m%d"))
    assert (
        int(redis_for(settings).get(key)) == run.completion.prompt_tokens + run.completion.completion_tokens
    )


def test_a_retried_reply_job_still_does_the_action_its_reply_asked_for(configured, fake_model, fake_twilio):
    """The worker died after the closing text went out and before the chat was ended: the retried
    job finds the text answered, and still ends the chat (once)."""
    from workers import jobs

    chat = make_chat(tools=[{"type": "end_chat"}])
    text = inbound(chat, "thanks, that's all")
    fake_model.queue_tool_calls(("end_chat", {"closing_text": "Bye!"}))

    first = replies.answer_message(configured, text.id)  # the job's work, without its action
    assert first.outcome == "answered" and first.action["name"] == "end_chat"
    assert Chat.get_by_id(chat.chat_id).chat_status == "ongoing"

    retried = jobs.reply_to_message(text.id)  # RQ runs the job again

    assert retried["outcome"] == "skipped"
    ended = Chat.get_by_id(chat.chat_id)
    assert (ended.chat_status, ended.end_reason) == ("ended", "agent")
    assert [m["Body"] for m in fake_twilio.messages] == ["Bye!"] and len(fake_model.requests) == 1


def test_whatsapp_tool_call_and_handoff(client, configured, fake_model, fake_twilio, tool_server):
    """On WhatsApp the same loop runs: a tool, then a hand-off; the reply goes back on WhatsApp."""
    from workers import jobs

    tool_server.answer = lambda request: Response.json(200, {"open": "9-17"})
    client.patch(
        "/v1/agents/agent_default",
        json={
            "tools": [function_tool(tool_server, name="opening_hours"), {"type": "handoff_to_human"}],
            "webhook_secret": SECRET,
        },
        headers=AUTH,
    )
    fake_model.queue_tool_calls(("opening_hours", {}))
    fake_model.queue_tool_calls(
        ("handoff_to_human", {"reason": "wants a table for 20"}),
        content="We open 9-17; a colleague will confirm your table.",
    )

    post_twilio(client, "/twilio/sms", inbound_whatsapp("Can I book for 20 people?"))
    message = Message.get(Message.content == "Can I book for 20 people?")
    jobs.reply_to_message(message.id)

    [sent] = fake_twilio.messages
    assert (sent["From"], sent["To"]) == (WHATSAPP_OUR, WHATSAPP_PERSON)
    assert sent["Body"].startswith("We open 9-17")
    chat = Chat.get_by_id(message.chat_id)
    assert chat.channel == "whatsapp" and chat.operator_held_at is not None
    [reply] = [
        m
        for m in client.get(f"/v1/chats/{chat.chat_id}", headers=AUTH).get_json()["messages"]
        if m["role"] == "agent"
    ]
    assert [c["name"] for c in reply["tool_calls"]] == ["opening_hours", "handoff_to_human"]
