"""GET /v1/agents/{agent_id}/usage and GET /v1/usage: spend against the caps, read over the API."""

from __future__ import annotations

from gateway.agent import spend
from gateway.conversations.agents import default_agent
from gateway.storage.models import Agent, Chat, ChatType, Message, ReplyState, Role
from tests.conftest import GATEWAY_API_KEY
from tests.payloads import PERSON

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}


def test_agent_usage_shows_tokens_replies_and_caps(client, settings):
    """An agent's usage: today's tokens and replies against its caps, and one person's counts."""
    caps = {"tokens_per_day": 5000, "replies_per_person_per_hour": 4}
    agent_id = client.post("/v1/agents", json=caps, headers=AUTH).get_json()["agent_id"]
    agent = Agent.get_by_id(agent_id)
    spend.record_tokens(settings, agent_id, 120, 30)
    spend.admit_reply(settings, agent, PERSON, 1)

    usage = client.get(f"/v1/agents/{agent_id}/usage", query_string={"phone_number": PERSON}, headers=AUTH)
    assert usage.status_code == 200, usage.get_data(as_text=True)
    body = usage.get_json()
    assert body["agent_id"] == agent_id
    assert (body["tokens_today"], body["tokens_per_day"]) == (150, 5000)
    assert (body["replies_today"], body["replies_per_person_per_hour"]) == (1, 4)
    assert body["replies_per_person_per_day"] == settings.spend_replies_per_person_per_day
    assert body["person"] == {"phone_number": PERSON, "replies_this_hour": 1, "replies_today": 1}

    gateway = client.get("/v1/usage", headers=AUTH).get_json()
    assert gateway["tokens_today"] == 150
    assert gateway["tokens_per_day"] == settings.spend_gateway_tokens_per_day


def test_usage_needs_the_key_and_a_live_agent(client):
    """Usage is behind the API key; an unknown agent is a 404."""
    assert client.get("/v1/usage").status_code == 401
    assert client.get("/v1/agents/agent_nope/usage", headers=AUTH).status_code == 404
    assert client.get(f"/v1/agents/{default_agent().agent_id}/usage", headers=AUTH).status_code == 200


def test_usage_is_in_the_openapi_document(client):
    """Both operations are documented (and so covered by the schemathesis run)."""
    paths = client.get("/v1/openapi.json").get_json()["paths"]
    assert paths["/v1/agents/{agent_id}/usage"]["get"]["operationId"] == "getAgentUsage"
    assert paths["/v1/usage"]["get"]["operationId"] == "getGatewayUsage"


def test_refused_texts_show_their_reply_state(client, settings):
    """An inbound text refused by a cap shows `reply_state` and `error_code` in the chat's messages."""
    chat = Chat.create(
        agent=default_agent(), chat_type=ChatType.SMS.value, from_number="+15005550006", to_number=PERSON
    )
    Message.create(
        chat=chat,
        role=Role.USER.value,
        content="hi",
        status="received",
        reply_state=ReplyState.RATE_LIMITED.value,
        error_code="rate_limited",
        error_message="This person reached the agent's cap of 30 replies per hour.",
    )
    [message] = client.get(f"/v1/chats/{chat.chat_id}", headers=AUTH).get_json()["messages"]
    assert (message["reply_state"], message["error_code"]) == ("rate_limited", "rate_limited")
