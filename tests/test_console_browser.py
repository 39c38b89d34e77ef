"""The console in a real browser: headless Chromium against a real gunicorn gateway and worker.

One gateway, worker and browser serve the whole module (SQLite; the PostgreSQL side of every
console action is covered by tests/test_console.py); each test uses its own phone numbers and
a fresh browser context (no cookies). Only Twilio and the model are loopback fakes.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api as playwright_api

from gateway.config import Settings
from tests.browser import PHONE, Screenshots, module_browser, start_gateway
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, GATEWAY_API_KEY, free_port, sign, wait_for
from tests.payloads import inbound_sms, message_sid

OUR_NUMBER = "+15005550006"


class Stack:
    """The running gateway and what tests need to drive it."""

    def __init__(self, url: str, settings: Settings, fake_twilio, fake_model, shots: Screenshots) -> None:
        """Remember the parts."""
        self.url, self.settings, self.shots = url, settings, shots
        self.twilio, self.model = fake_twilio, fake_model

    def post_signed(self, path: str, form: dict[str, str]) -> int:
        """POST a form to the gateway signed exactly as Twilio signs it; the HTTP status."""
        url = self.url + path
        request = urllib.request.Request(
            url,
            data=urllib.parse.urlencode(form).encode(),
            headers={"X-Twilio-Signature": sign(url, form, AUTH_TOKEN)},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status

    def text_in(self, person: str, body: str) -> None:
        """The person texts our number (Twilio's inbound webhook)."""
        assert self.post_signed("/twilio/sms", inbound_sms(body, From=person, To=OUR_NUMBER)) == 200

    def status(self, sid: str, status: str, error_code: str | None = None) -> None:
        """Twilio reports a delivery status for message `sid`."""
        form = {"MessageSid": sid, "MessageStatus": status, "AccountSid": ACCOUNT_SID}
        if error_code:
            form["ErrorCode"] = error_code
        assert self.post_signed("/twilio/status", form) == 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server) -> Iterator[Stack]:
    """Gateway (gunicorn) + worker + loopback fakes, started once for the module."""
    from tests.fakes import FakeModel, FakeTwilio

    if redis_server.proc is None:
        redis_server.start()
    folder = tmp_path_factory.mktemp("console-browser")
    artefacts = tmp_path_factory.mktemp("artefacts")
    fake_twilio = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN).start()
    fake_model = FakeModel().start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        database_url=f"sqlite:///{folder / 'gateway.sqlite3'}",
        redis_url=redis_server.url,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_api_base_url=fake_twilio.url,
        public_base_url=url,
        openai_api_key="sk-test",
        openai_base_url=fake_model.url + "/v1",
        openai_model="fake-model",
        gateway_api_key=GATEWAY_API_KEY,
        instance_path=str(folder / "instance"),
        queue_prefix=f"browser-{uuid.uuid4().hex[:8]}",
    )
    from gateway.storage import db

    db.init_database(settings.database_url, pool_size=2)
    db.upgrade()
    db.database.close()
    gateway = start_gateway(settings, port, folder)
    next(gateway)
    try:
        yield Stack(url, settings, fake_twilio, fake_model, Screenshots(artefacts))
    finally:
        gateway.close()
        fake_twilio.stop()
        fake_model.stop()


@pytest.fixture(scope="module")
def browser(stack):
    """One headless Chromium for the module."""
    yield from module_browser()


@pytest.fixture
def page(browser, stack):
    """A fresh phone-sized browser context (no cookies): a new visitor."""
    context = browser.new_context(viewport=PHONE, base_url=stack.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


def person() -> str:
    """A phone number of this test's own, so tests sharing the gateway never meet."""
    return "+1415555" + str(uuid.uuid4().int % 10_000).zfill(4)


def sign_in(page, key: str = GATEWAY_API_KEY) -> None:
    """Sign in through the form."""
    page.goto("/console/sign-in")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")


def expect(locator):
    """Playwright's web-first assertions (they wait, event-driven, up to the default timeout)."""
    return playwright_api.expect(locator)


def test_sign_in_is_refused_without_the_key_then_opens_the_console(page, stack):
    """A wrong key is refused in words; the right one opens the chats."""
    page.goto("/console/chats")
    expect(page.locator("h1")).to_have_text("Sign in to the console")
    stack.shots.take(page, "sign-in")
    sign_in(page, "not-the-key")
    expect(page.get_by_role("alert")).to_contain_text("That key is not right")
    sign_in(page)
    expect(page.locator("h1")).to_have_text("Chats")
    stack.shots.take(page, "chats")


def test_text_appears_live_and_delivery_status_moves(page, stack):
    """An open chat page shows a new text and the reply's status changes without a reload."""
    them = person()
    stack.model.reply_with("Hello from the agent")
    stack.text_in(them, "first text")
    sign_in(page)
    page.goto(f"/console/chats?q={urllib.parse.quote(them)}")
    page.click(f"text={them}")
    expect(page.locator(".transcript")).to_contain_text("first text")
    reply = page.locator(".msg.agent").first
    expect(reply).to_contain_text("Hello from the agent")
    sent = wait_for(lambda: stack.twilio.messages_to(them), message="the agent's reply at Twilio")
    expect(reply.locator(".status")).to_have_text("queued")

    stack.text_in(them, "a second text, while the page is open")
    expect(page.locator(".transcript")).to_contain_text("a second text, while the page is open")
    stack.status(sent[0]["sid"], "sent")
    expect(reply.locator(".status")).to_have_text("sent")
    stack.status(sent[0]["sid"], "delivered")
    expect(reply.locator(".status")).to_have_text("delivered")
    stack.shots.take(page, "chat")

    second = wait_for(lambda: stack.twilio.messages_to(them)[1:], message="the second reply")
    stack.status(second[0]["sid"], "undelivered", "30003")
    expect(page.locator(".error-detail").last).to_contain_text("30003")
    expect(page.locator(".error-detail").last).to_contain_text("off or out of reach")


def test_take_over_reply_by_hand_and_hand_back(page, stack):
    """While an operator holds the chat the agent is silent; the operator's text goes out; hand back."""
    them = person()
    stack.model.reply_with("agent speaking")
    stack.text_in(them, "hello")
    wait_for(lambda: stack.twilio.messages_to(them), message="the agent's first reply")
    sign_in(page)
    page.goto(f"/console/chats?q={urllib.parse.quote(them)}")
    page.click(f"text={them}")
    page.click("button:has-text('Take over')")
    expect(page.locator("#held")).to_be_visible()

    stack.text_in(them, "is a human there?")
    expect(page.locator(".transcript")).to_contain_text("is a human there?")
    page.fill("textarea[name=text]", "Yes, a person is here now.")
    page.click("form.reply button[type=submit]")
    operator_msg = page.locator(".msg.operator")
    expect(operator_msg).to_contain_text("Yes, a person is here now.")
    expect(operator_msg.locator("b")).to_have_text("Operator")
    wait_for(lambda: len(stack.twilio.messages_to(them)) >= 2, message="the operator's text at Twilio")
    to_them = stack.twilio.messages_to(them)
    assert [m["Body"] for m in to_them] == ["agent speaking", "Yes, a person is here now."]
    stack.shots.take(page, "takeover")

    page.click("button:has-text('Hand back')")
    expect(page.locator("button:has-text('Take over')")).to_be_visible()
    stack.text_in(them, "thanks")
    wait_for(lambda: len(stack.twilio.messages_to(them)) >= 3, message="the agent answering again")
    assert stack.twilio.messages_to(them)[2]["Body"] == "agent speaking"


def test_a_form_without_its_csrf_token_is_refused(page, stack):
    """A form whose CSRF token was removed does nothing but say why."""
    them = person()
    stack.text_in(them, "please do not end me")
    sign_in(page)
    page.goto(f"/console/chats?q={urllib.parse.quote(them)}")
    page.click(f"text={them}")
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('End chat')")
    expect(page.get_by_role("alert")).to_contain_text("security token is missing")
    page.goto(f"/console/chats?q={urllib.parse.quote(them)}")
    expect(page.locator(".chat-list")).to_contain_text("ongoing")


def test_signature_is_checked_for_a_message_sid(stack):
    """Sanity of the harness: an unsigned webhook is refused by the real gateway."""
    form = inbound_sms("unsigned", From=person(), To=OUR_NUMBER, MessageSid=message_sid())
    request = urllib.request.Request(stack.url + "/twilio/sms", data=urllib.parse.urlencode(form).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 - loopback
    assert refused.value.code == 403


def test_outbound_double_click_starts_one_conversation(page, stack):
    """Make an outbound SMS, double-clicked: one chat, one opening text at Twilio."""
    them = person()
    from gateway.storage import db
    from gateway.storage.models import Chat, PhoneNumber

    db.init_database(stack.settings.database_url, pool_size=2)  # this module's database, read directly
    with db.database.connection_context():
        PhoneNumber.insert(phone_number=OUR_NUMBER).on_conflict_ignore().execute()
    sign_in(page)
    page.goto("/console/outbound")
    page.fill("input[name=to_number]", them)
    page.fill("textarea[name=message]", "Your table is ready.")
    stack.shots.take(page, "outbound")
    page.dblclick("form.card button[type=submit]")
    expect(page.locator(".transcript")).to_contain_text("Your table is ready.")
    wait_for(lambda: stack.twilio.messages_to(them), message="the opening text at Twilio")
    with db.database.connection_context():
        assert Chat.select().where(Chat.to_number == them).count() == 1
    [opening] = stack.twilio.messages_to(them)
    assert opening["Body"].startswith("Your table is ready.")


def test_agent_edit_shows_the_api_validation_message(page, stack):
    """An out-of-range setting is refused with the API's own message next to the field; a good one
    saves; the agents list shows the new agent."""
    sign_in(page)
    page.goto("/console/agents/new")
    page.fill("input[name=agent_id]", "agent_browser_" + uuid.uuid4().hex[:6])
    page.fill("input[name=name]", "Front desk")
    page.click("form.agent-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("created")
    page.fill("input[name=temperature]", "5")
    page.click("form.agent-form button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("temperature: Input should be less than or equal to 2")
    expect(page.locator("label.invalid")).to_contain_text("temperature")
    stack.shots.take(page, "agent-validation")
    page.fill("input[name=temperature]", "0.4")
    page.click("form.agent-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("Saved")
    expect(page.locator("input[name=temperature]")).to_have_value("0.4")

    page.goto("/console/agents")
    expect(page.locator("h1")).to_have_text("Agents")
    expect(page.locator(".chat-list")).to_contain_text("Front desk")
    stack.shots.take(page, "agents")


def test_numbers_page_configures_twilio_and_contacts_show_opt_outs(page, stack):
    """Configure on Twilio points a number's webhook here and says what changed; contacts list STOPs."""
    number = "+1415555" + str(uuid.uuid4().int % 10_000).zfill(4)
    stack.twilio.add_number(number, sms_url="https://old.example/sms")
    from gateway.storage import db
    from gateway.storage.models import PhoneNumber

    db.init_database(stack.settings.database_url, pool_size=2)
    with db.database.connection_context():
        PhoneNumber.insert(phone_number=number).on_conflict_ignore().execute()
    sign_in(page)
    page.goto("/console/numbers")
    card = page.locator(f"section.number[data-number='{number}']").first
    expect(card).to_contain_text("https://old.example/sms")
    card.locator("button:has-text('Configure on Twilio')").click()
    changed = f"sms_url: https://old.example/sms → {stack.url}/twilio/sms"
    expect(page.locator(".flash")).to_contain_text(changed)
    expect(page.locator(f"section.number[data-number='{number}']").first).to_contain_text("points here")
    stack.shots.take(page, "numbers")

    them = person()
    stack.text_in(them, "STOP")
    page.goto(f"/console/contacts?q={urllib.parse.quote(them)}")
    expect(page.locator("table")).to_contain_text("opted out")
    stack.shots.take(page, "contacts")


def test_contact_export_downloads_and_erase_removes_their_chats(page, stack, browser):
    """A person's page: Export downloads their JSON; Erase names what goes, refuses a form without its
    CSRF token, then erases and says what went; their chats leave the list. Anonymous: sign-in form."""
    them = person()
    stack.model.reply_with("Noted.")
    stack.text_in(them, "please forget me")
    wait_for(lambda: stack.twilio.messages_to(them), message="the agent's reply at Twilio")
    anonymous = browser.new_context(viewport=PHONE, base_url=stack.url).new_page()
    anonymous.goto(f"/console/contacts/{urllib.parse.quote(them)}/export")
    expect(anonymous.locator("h1")).to_have_text("Sign in to the console")
    anonymous.context.close()

    sign_in(page)
    page.goto(f"/console/contacts?q={urllib.parse.quote(them)}")
    page.click(f"table >> text={them}")
    expect(page.locator("h1")).to_have_text(them)
    stack.shots.take(page, "contact")
    with page.expect_download() as download_info:
        page.click("text=Export")
    download = download_info.value
    assert download.suggested_filename == f"contact-{them[1:]}.json"
    exported = json.loads(Path(download.path()).read_text())
    assert exported["phone_number"] == them
    assert [m["content"] for m in exported["chats"][0]["messages"]] == ["please forget me", "Noted."]

    page.click("text=Erase…")
    expect(page.locator("h1")).to_have_text(f"Erase {them}?")
    expect(page.locator(".erase-preview")).to_contain_text("1 chat with their transcripts")
    expect(page.locator(".erase-preview")).to_contain_text("2 messages")
    stack.shots.take(page, "contact-erase")
    confirm_url = page.url
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    page.click("button:has-text('Erase everything')")
    expect(page.get_by_role("alert")).to_contain_text("security token is missing")
    page.goto(f"/console/chats?q={urllib.parse.quote(them)}")
    expect(page.locator(".chat-list")).to_contain_text(them)  # refused: nothing erased

    page.goto(confirm_url)
    page.click("button:has-text('Erase everything')")
    erased = f"Erased everything stored about {them}: 1 chat, 2 messages"
    expect(page.locator(".flash")).to_contain_text(erased)
    page.goto(f"/console/chats?q={urllib.parse.quote(them)}")
    expect(page.locator("main")).to_contain_text("No chats match these filters")
    expect(page.locator(".chat-list")).not_to_contain_text(them)
