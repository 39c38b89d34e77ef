"""The OpenAPI document against the app itself: schemathesis fuzzes every /v1 route in-process.

Each generated request goes through the Flask app (WSGI, no network) with the bearer key, on each
backend; the checks are: no 5xx (and no exception escaping the app, since TESTING propagates them),
the status code, content type, headers and body are what the document lists, and invalid input is
refused with a 4xx (negative_data_rejection), and valid input is not refused (positive_data_acceptance,
but for the few rules no JSON Schema can state: BEYOND_THE_SCHEMA). Random cases (fuzzing) and
schemathesis's coverage cases (every documented bound, and each way past it) both run.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api.contract import OPERATIONS
from tests.conftest import GATEWAY_API_KEY

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
# Examples per operation: enough to find shape and 5xx bugs, few enough to finish in seconds.
MAX_EXAMPLES = 25
# The 422s a schema-valid request may still get: rules a JSON Schema cannot state (the document
# states the rest: patterns, bounds, enums, uniqueItems, choices only with type enum). Each is
# (field or None for any, the words of the refusal); any other 422 to valid data is a failure.
BEYOND_THE_SCHEMA = [
    # Every string at any depth, free-form metadata included: NUL and lone surrogates cannot be stored.
    # The document's description says so; a per-string pattern cannot reach free-form JSON, and
    # ECMA-262 and Python patterns disagree on surrogates.
    (None, "must not contain NUL characters or unpaired surrogates"),
    # Whether a number is assigned in its country's numbering plan (the document gives its shape).
    (None, "is not a valid phone number"),
    # The tz database of the machine the gateway runs on: its list differs between hosts.
    ("timezone", "is not an IANA timezone name"),
    # Names unique across the list: uniqueItems compares whole items, not one key of each.
    ("analysis_fields", "is used twice"),
    ("tools", "is listed twice"),
    # A tool's parameters schema, measured once serialized; a URL whose port or host urllib can't read.
    (None, "parameters is longer than"),
    (None, "cannot be read"),
    # Two fields compared with each other.
    ("to_number", "must differ from from_number"),
    # State and settings: a webhook_url or function tool needs a signing secret unless the server has
    # EVENTS_WEBHOOK_SECRET (a PATCH is judged against the stored agent's other fields).
    ("webhook_secret", "every event delivery and tool call is signed"),
    # State: only keys this API handed out, agents that exist, numbers the gateway has.
    ("pagination_key", "is not a key this API handed out"),
    (None, "no agent with id"),
    (None, "is not one of the gateway's numbers"),
]


def valid_data_accepted(ctx, response, case):
    """positive_data_acceptance, but for a 422 naming a rule of BEYOND_THE_SCHEMA."""
    if response.status_code == 422:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = {}
        for field, words in BEYOND_THE_SCHEMA:
            if words in str(error.get("message")) and field in (None, error.get("field")):
                return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    valid_data_accepted,
]


def test_document_lists_every_route(client):
    """Every documented path exists in the app, and every /v1 route of the app is documented."""
    doc = client.get("/v1/openapi.json").json
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's GATEWAY_API_KEY.",
    }
    documented = {path.replace("{", "<").replace("}", ">") for path in doc["paths"]}
    routes = {rule.rule for rule in client.application.url_map.iter_rules() if rule.endpoint != "static"}
    assert {r for r in routes if r.startswith("/v1/")} <= documented
    assert documented <= routes
    for path in ("/twilio/sms", "/twilio/status", "/healthz", "/readyz"):
        assert path in doc["paths"]
        for operation in doc["paths"][path].values():
            assert operation["security"] == []


def test_document_is_valid_openapi_31(client):
    """Schemathesis loads and resolves it (every $ref, every operation)."""
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", client.application)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20


VALID_NUMBERS = ["+14155550123", "+14155552671", "+442071838750", "+4915123456789"]


@pytest.fixture
def seeded(app, fake_model) -> dict[str, str]:
    """An agent, an ongoing chat with one exchange, and a number, so requests can hit real rows."""
    client = app.test_client()
    agent = client.post("/v1/agents", json={"agent_id": "agent_fuzz", "retry_attempts": 0}, headers=AUTH)
    assert agent.status_code == 201
    chat = client.post("/v1/chats", json={"agent_id": "agent_fuzz", "user_id": "fuzz"}, headers=AUTH).json
    assert client.post(f"/v1/chats/{chat['chat_id']}/completions", json={"content": "hi"}, headers=AUTH)
    for number in VALID_NUMBERS[:2]:
        client.post("/v1/phone-numbers", json={"phone_number": number}, headers=AUTH)
    return {"agent_id": "agent_fuzz", "chat_id": chat["chat_id"], "phone_number": VALID_NUMBERS[0]}


# Refusals of invalid data: schemathesis's default list, and 413 and 414, since a request refused for
# its size (a generated body past the 1 MB cap) or its URI's length is refused all the same.
REFUSALS = [400, 401, 403, 404, 405, 406, 409, 413, 414, 415, 422, 428, 429, "5xx"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}}
)


@pytest.fixture
def api_schema(app, seeded):
    """The app's own document, loaded through the app."""
    return schemathesis.openapi.from_wsgi("/v1/openapi.json", app, config=CONFIG)


def fuzzed_operations(schema):
    """The /v1 operations to fuzz: all of them."""
    selected = schema.include(path_regex="^/v1/")
    return [result.ok() for result in selected.get_all_operations()]


def aim_at_rows(operation, seeded: dict[str, str]):
    """A function making a generated valid case name rows that exist, so it gets past 404/422."""

    def aim(case):
        if isinstance(case.body, dict):
            if operation.path == "/v1/chats" and "agent_id" in case.body:
                case.body["agent_id"] = seeded["agent_id"]
            if operation.path == "/v1/sms-chats":
                # From one of our numbers, to a valid one, so some requests start a conversation.
                case.body["from_number"] = seeded["phone_number"]
                case.body["to_number"] = VALID_NUMBERS[2 + len(str(case.body.get("to_number"))) % 2]
                if case.body.get("agent_id") is not None:
                    case.body["agent_id"] = seeded["agent_id"]
            if operation.path == "/v1/phone-numbers" and "phone_number" in case.body:
                case.body["phone_number"] = VALID_NUMBERS[len(str(case.body["phone_number"])) % 4]
            for field in ("inbound_agent_id", "outbound_agent_id"):
                if case.body.get(field) is not None:
                    case.body[field] = seeded["agent_id"]
        return case

    return aim


def cases(operation, seeded: dict[str, str]):
    """Random valid requests, valid ones aimed at existing rows, and invalid ones."""
    names = {p.name for p in operation.path_parameters} if operation.path_parameters else set()
    rows = {k: v for k, v in seeded.items() if k in names}
    if operation.method.lower() == "delete" and "phone_number" in rows:
        rows["phone_number"] = VALID_NUMBERS[1]  # the other reads keep theirs
    aimed = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=rows or None).map(
        aim_at_rows(operation, seeded)
    )
    return st.one_of(
        aimed,
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )


def test_v1_routes_conform_to_the_document(api_schema, seeded, monkeypatch):
    """No server error and a documented status and body for generated requests to every /v1 route.

    Driven through Hypothesis directly: schemathesis's pytest plugin does not run on pytest 9 yet.
    """
    from gateway.api import completions

    monkeypatch.setattr(completions, "SLOT_WAIT_SECONDS", 0.1)
    failures: list[str] = []
    operations = fuzzed_operations(api_schema)
    assert len(operations) == len(OPERATIONS) + 1  # every declared operation, and the document itself
    for operation in operations:

        @given(case=cases(operation, seeded))
        @settings(
            max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case):
            case.call_and_validate(headers=AUTH, checks=CHECKS)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, not the first
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_every_v1_operation_documents_its_errors(client):
    """Malformed requests, auth, size, URI length and validation errors are documented on every operation."""
    doc = client.get("/v1/openapi.json").json
    for path, item in doc["paths"].items():
        if not path.startswith("/v1/") or path == "/v1/openapi.json":
            continue
        for method, operation in item.items():
            assert {"400", "401", "413", "414", "422"} <= set(operation["responses"]), (method, path)
            if "requestBody" in operation:
                assert operation["requestBody"]["required"] is True


def test_v1_routes_conform_on_schemathesis_coverage_cases(api_schema, seeded, monkeypatch):
    """Schemathesis's coverage phase: each documented boundary and each way to break it, sent once.

    Deterministic cases (about a thousand): values at and past every bound, each enum value and one
    outside it, missing and empty bodies, unknown and repeated query parameters, 8.0 for an integer.
    Valid ones must get a documented answer; invalid ones a documented 4xx (negative_data_rejection).
    """
    from gateway.api import completions

    monkeypatch.setattr(completions, "SLOT_WAIT_SECONDS", 0.1)
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    failures: list[str] = []
    sent = 0
    for operation in fuzzed_operations(api_schema):
        config = api_schema.config.generation_for(operation=operation)
        for case in api_schema.iter_coverage_cases(
            operation, generation_modes=modes, generation_config=config
        ):
            sent += 1
            try:
                case.call_and_validate(headers=AUTH, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} query={case.query} body={case.body!r:.300}: {exc}")
    assert sent > 500
    assert not failures, "\n\n".join(failures[:20])
