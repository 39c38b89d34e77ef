"""The operator console without a browser: sign-in, sessions, CSRF, the pause after wrong keys,
and what an anonymous visitor can (not) see."""

from __future__ import annotations

import re

import pytest

from gateway.console.auth import COOKIE_NAME, MAX_FAILURES
from gateway.storage.models import Chat, ChatType, Message, MessageStatus, Role, utcnow
from tests.conftest import GATEWAY_API_KEY


def csrf_from(html: str) -> str:
    """The CSRF token a page's forms carry."""
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, key: str = GATEWAY_API_KEY):
    """Open the sign-in form and post the key with its CSRF token."""
    token = csrf_from(client.get("/console/sign-in").get_data(as_text=True))
    return client.post("/console/sign-in", data={"key": key, "csrf_token": token})


@pytest.fixture
def sms_chat(app):
    """An ongoing SMS chat with one inbound text and one delivered reply."""
    now = utcnow()
    chat = Chat.create(
        agent="agent_default",
        chat_type=ChatType.SMS.value,
        from_number="+15550001111",
        to_number="+15557654321",
        ongoing_pair="+15550001111|+15557654321",
        start_timestamp=now,
        last_activity_at=now,
    )
    Message.create(chat=chat, role=Role.USER.value, content="hello there", status="received")
    Message.create(
        chat=chat, role=Role.AGENT.value, content="hi!", status=MessageStatus.FAILED.value, error_code="30003"
    )
    return chat


@pytest.fixture(autouse=True)
def default_agent(app):
    """The default agent exists (chats point at it)."""
    from gateway.conversations.agents import default_agent

    return default_agent()


def test_front_page_links_to_the_console(client):
    """`/` is a page that leads to the console."""
    response = client.get("/")
    assert response.status_code == 200
    assert 'href="/console/chats"' in response.get_data(as_text=True)


def test_anonymous_visitors_see_nothing(client, sms_chat):
    """Every console page redirects to the sign-in form; JSON and actions answer 401, no data."""
    pages = ("/console/", "/console/chats", f"/console/chats/{sms_chat.chat_id}", "/console/agents",
             "/console/agents/agent_default", "/console/numbers", "/console/outbound", "/console/contacts",
             f"/console/chats/{sms_chat.chat_id}/media/1/0")  # fmt: skip
    for path in pages:
        response = client.get(path)
        assert response.status_code == 302 and "/console/sign-in" in response.headers["Location"]
    live = client.get(f"/console/chats/{sms_chat.chat_id}/live.json")
    assert live.status_code == 401 and "hello there" not in live.get_data(as_text=True)
    token = csrf_from(client.get("/console/sign-in").get_data(as_text=True))
    ended = client.post(f"/console/chats/{sms_chat.chat_id}/end", data={"csrf_token": token})
    assert ended.status_code == 401
    assert Chat.get_by_id(sms_chat.chat_id).chat_status == "ongoing"


def cookie_flags(response) -> tuple[str, set[str]]:
    """The console session cookie a response sets: its name=value part, and its flags (lower case)."""
    [cookie] = [c for c in response.headers.getlist("Set-Cookie") if c.startswith(COOKIE_NAME + "=")]
    first, *attributes = (part.strip() for part in cookie.split(";"))
    return first, {a.lower() for a in attributes}


@pytest.mark.parametrize("origin", ["https://sms.example.test", "http://sms.example.test"])
def test_session_cookie_is_httponly_lax_and_secure_only_over_https(settings, origin):
    """HttpOnly and SameSite=Lax always; Secure when PUBLIC_BASE_URL is https, not when it is http
    (a browser would never send a Secure cookie back over plain http: nobody could sign in)."""
    from gateway import create_app

    app = create_app({"TESTING": True, "SETTINGS": settings.model_copy(update={"public_base_url": origin})})
    response = sign_in(app.test_client())
    assert response.status_code == 302
    _, flags = cookie_flags(response)
    assert "httponly" in flags and "samesite=lax" in flags
    assert ("secure" in flags) is origin.startswith("https://")


def test_sign_in_with_the_key_opens_the_console(client, sms_chat):
    """The right key signs in and shows the chats (the cookie's flags: the test above)."""
    response = sign_in(client)
    assert response.status_code == 302
    _, flags = cookie_flags(response)
    assert "httponly" in flags and "samesite=lax" in flags and "secure" in flags
    page = client.get("/console/chats").get_data(as_text=True)
    assert "+15557654321" in page
    chat_page = client.get(f"/console/chats/{sms_chat.chat_id}").get_data(as_text=True)
    assert "hello there" in chat_page
    assert "30003" in chat_page and "out of reach" in chat_page  # the error code and its meaning


def test_wrong_key_is_refused_and_pauses_after_too_many(client):
    """A wrong key is refused in words; after MAX_FAILURES the address must wait, right key or not."""
    for _ in range(MAX_FAILURES):
        response = sign_in(client, "wrong")
        assert response.status_code == 401
        assert "not right" in response.get_data(as_text=True)
    paused = sign_in(client)
    assert paused.status_code == 429
    assert "Too many wrong keys" in paused.get_data(as_text=True)
    assert client.get("/console/chats").status_code == 302


def test_a_form_without_its_csrf_token_is_refused(client, sms_chat):
    """A signed-in operator's POST without the CSRF token does nothing."""
    sign_in(client)
    response = client.post(f"/console/chats/{sms_chat.chat_id}/end")
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    assert Chat.get_by_id(sms_chat.chat_id).chat_status == "ongoing"


def test_sign_out_ends_the_session(client):
    """After signing out, the console asks for the key again."""
    sign_in(client)
    token = csrf_from(client.get("/console/chats").get_data(as_text=True))
    client.post("/console/sign-out", data={"csrf_token": token})
    assert client.get("/console/chats").status_code == 302


def test_sign_in_never_redirects_off_site(client):
    """`next` may only lead into the console."""
    token = csrf_from(client.get("/console/sign-in").get_data(as_text=True))
    response = client.post(
        "/console/sign-in?next=https://evil.example/", data={"key": GATEWAY_API_KEY, "csrf_token": token}
    )
    assert response.headers["Location"] == "/console/chats"


def test_end_chat_from_the_console(client, sms_chat):
    """End chat ends it (end_reason operator)."""
    sign_in(client)
    page = client.get(f"/console/chats/{sms_chat.chat_id}").get_data(as_text=True)
    client.post(f"/console/chats/{sms_chat.chat_id}/end", data={"csrf_token": csrf_from(page)})
    chat = Chat.get_by_id(sms_chat.chat_id)
    assert chat.chat_status == "ended" and chat.end_reason == "operator" and chat.ongoing_pair is None


def test_chat_page_shows_usage_summary_profile_analysis_and_tool_calls(client, sms_chat):
    """A chat's page puts what the gateway learned in words an operator reads: its token usage, the
    summary, the person's profile, the post-chat analysis (custom fields by name) and the agent's tool
    calls with their outcome; no raw JSON, no Python values."""
    from gateway.storage.models import Agent, UserProfile

    Agent.update(
        analysis_fields=[
            {"name": "appointment_booked", "type": "boolean", "description": "A table was booked."},
            {"name": "party_size", "type": "number", "description": "How many people come."},
        ]
    ).where(Agent.agent_id == "agent_default").execute()

    Message.create(chat=sms_chat, role=Role.USER.value, content="can I come Friday?", status="received")
    Message.create(
        chat=sms_chat,
        role=Role.AGENT.value,
        content="Friday at 10 is free.",
        status=MessageStatus.DELIVERED.value,
        prompt_tokens=120,
        completion_tokens=30,
        tool_calls=[
            {
                "name": "check_calendar",
                "arguments": {"day": "friday"},
                "outcome": "ok",
                "result": '{"free": ["10:00"]}',
            },
            {"name": "book_table", "arguments": {"time": "10:00"}, "outcome": "timeout", "result": ""},
        ],
    )
    Message.create(
        chat=sms_chat, role=Role.AGENT.value, content="See you!", prompt_tokens=80, completion_tokens=5
    )
    Chat.update(
        summary="The person asked for a Friday slot; the agent offered 10:00.",
        chat_analysis={
            "chat_summary": "A Friday booking was discussed.",
            "user_sentiment": "positive",
            "chat_successful": True,
            "custom_analysis_data": {"appointment_booked": False, "party_size": None},
        },
    ).where(Chat.chat_id == sms_chat.chat_id).execute()
    UserProfile.create(
        key=f"phone:{sms_chat.to_number}",
        profile={"pets": ["a cat"], "preferences": ["mornings", "window seat"], "goals": [], "name": "Ana"},
    )
    sign_in(client)
    html = client.get(f"/console/chats/{sms_chat.chat_id}").get_data(as_text=True)
    # The words a person reads, without the markup (the live part is the same template).
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    text = text.replace("&#39;", "'").replace("&#34;", '"').replace("&quot;", '"')

    assert "200 prompt tokens · 35 completion tokens" in text
    assert "150 tokens" in text  # the reply's own tokens, next to it in the transcript
    assert "Summary The person asked for a Friday slot; the agent offered 10:00." in text
    # The profile schema's keys first, in its order, then the others (the same on both backends).
    assert "Profile Name Ana Preferences mornings; window seat Pets a cat" in text
    assert "Goals" not in text  # nothing known: left out
    assert (
        "Post-chat analysis What the chat was about A Friday booking was discussed. "
        "The person's sentiment positive Reached the agent's goal yes "
        "Appointment booked no Party size not known"
    ) in text
    assert 'called check_calendar ({"day": "friday"}) · answered → {"free": ["10:00"]}' in text
    assert 'called book_table ({"time": "10:00"}) · timed out' in text
    for raw in ("True", "False", "None", "[", "custom_analysis_data", "user_sentiment", "{'"):
        assert raw not in text.replace('["10:00"]', ""), raw
    # The page's live part (asked for every 1.5 s) shows the same.
    live = client.get(f"/console/chats/{sms_chat.chat_id}/live.json").get_json()
    assert "Reached the agent&#39;s goal" in live["html"] and "window seat" in live["html"]


PROXY = "10.0.0.1"  # a reverse proxy's address: every request reaches the gateway from it


def sign_in_via_proxy(client, forwarded_for: str, key: str = "wrong") -> int:
    """A sign-in through a proxy that appended the client's address to X-Forwarded-For; the status."""
    through = {"environ_base": {"REMOTE_ADDR": PROXY}, "headers": {"X-Forwarded-For": forwarded_for}}
    token = csrf_from(client.get("/console/sign-in", **through).get_data(as_text=True))
    return client.post("/console/sign-in", data={"key": key, "csrf_token": token}, **through).status_code


def test_behind_a_trusted_proxy_wrong_keys_pause_only_their_client(settings):
    """TRUSTED_PROXY_HOPS=1: the pause counts the client X-Forwarded-For names (its last value, the one
    our proxy appended), so one client's wrong keys lock out neither other clients nor the proxy."""
    from gateway import create_app

    app = create_app({"TESTING": True, "SETTINGS": settings.model_copy(update={"trusted_proxy_hops": 1})})
    guesser, colleague = app.test_client(), app.test_client()
    for n in range(MAX_FAILURES):
        # What the client itself puts in the header (first values) changes nothing.
        assert sign_in_via_proxy(guesser, f"198.51.100.{n}, 203.0.113.5") == 401
    assert sign_in_via_proxy(guesser, "198.51.100.99, 203.0.113.5", GATEWAY_API_KEY) == 429
    assert sign_in_via_proxy(guesser, "203.0.113.5", GATEWAY_API_KEY) == 429
    assert sign_in_via_proxy(colleague, "203.0.113.77", GATEWAY_API_KEY) == 302


def test_without_trusted_proxies_x_forwarded_for_is_ignored(client, settings):
    """TRUSTED_PROXY_HOPS unset (0): a client cannot dodge the pause by writing X-Forwarded-For; every
    request counts against the address it came from."""
    assert settings.trusted_proxy_hops == 0
    for n in range(MAX_FAILURES):
        assert sign_in_via_proxy(client, f"203.0.113.{n}") == 401
    assert sign_in_via_proxy(client, "203.0.113.200", GATEWAY_API_KEY) == 429


def test_chats_show_their_channel_and_filter_by_it(client, sms_chat):
    """A WhatsApp chat reads "WhatsApp" on the list and its page; the channel filter picks it out."""
    now = utcnow()
    whatsapp = Chat.create(
        agent="agent_default",
        chat_type=ChatType.SMS.value,
        channel="whatsapp",
        from_number="whatsapp:+15550001111",
        to_number="whatsapp:+15559990000",
        ongoing_pair="whatsapp:+15550001111|whatsapp:+15559990000",
        start_timestamp=now,
        last_activity_at=now,
    )
    sign_in(client)

    def listed(query: str = "") -> tuple[str, list[str]]:
        page = client.get(f"/console/chats{query}").get_data(as_text=True)
        return page, re.findall(r'href="/console/chats/(chat_[^"]+)"', page)

    page, ids = listed()
    assert set(ids) == {sms_chat.chat_id, whatsapp.chat_id}
    assert "<small>WhatsApp on whatsapp:+15550001111" in page
    assert "<small>SMS on +15550001111" in page
    assert '<select name="channel" aria-label="Channel">' in page
    assert listed("?channel=whatsapp")[1] == [whatsapp.chat_id]
    page, ids = listed("?channel=sms")
    assert ids == [sms_chat.chat_id]
    assert '<option value="sms" selected>SMS</option>' in page
    # Our number's filter finds its chats on both channels; an unknown channel filters nothing.
    assert set(listed("?number=%2B15550001111")[1]) == {sms_chat.chat_id, whatsapp.chat_id}
    assert set(listed("?channel=fax")[1]) == {sms_chat.chat_id, whatsapp.chat_id}

    chat_page = client.get(f"/console/chats/{whatsapp.chat_id}").get_data(as_text=True)
    assert f"WhatsApp chat {whatsapp.chat_id}" in chat_page
    assert f"SMS chat {sms_chat.chat_id}" in client.get(f"/console/chats/{sms_chat.chat_id}").get_data(
        as_text=True
    )
