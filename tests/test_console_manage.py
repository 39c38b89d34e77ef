"""The console's agents, numbers, outbound and contacts pages (both backends, Flask's test client)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from gateway.storage.models import Agent, Chat, Contact, PhoneNumber, utcnow
from tests.conftest import PUBLIC_BASE_URL
from tests.test_console import csrf_from, sign_in

OURS = "+15005550006"
PERSON = "+14155550123"


@pytest.fixture
def signed_in(client, app):
    """A signed-in console client and one of our numbers."""
    from gateway.conversations.agents import default_agent

    default_agent()
    PhoneNumber.create(phone_number=OURS)
    sign_in(client)
    return client


def form_key(html: str) -> str:
    """The outbound form's idempotency key."""
    return re.search(r'name="form_key" value="([^"]+)"', html).group(1)


def test_numbers_page_shows_the_webhook_and_configures_it(signed_in, fake_twilio):
    """A number whose webhook points elsewhere gets a Configure button that points it here."""
    fake_twilio.add_number(OURS, sms_url="https://old.example/sms")
    page = signed_in.get("/console/numbers").get_data(as_text=True)
    assert "https://old.example/sms" in page and "Configure on Twilio" in page
    response = signed_in.post(f"/console/numbers/{OURS}/configure", data={"csrf_token": csrf_from(page)})
    assert response.status_code == 302
    page = signed_in.get("/console/numbers").get_data(as_text=True)
    assert f"sms_url: https://old.example/sms → {PUBLIC_BASE_URL}/twilio/sms" in page
    assert "points here" in page
    assert next(iter(fake_twilio.numbers.values()))["sms_url"] == PUBLIC_BASE_URL + "/twilio/sms"


def test_numbers_page_says_why_when_twilio_cannot_be_read(signed_in, fake_twilio):
    """Twilio failing is shown in words, not a 500."""
    fake_twilio.stop()
    page = signed_in.get("/console/numbers")
    assert page.status_code == 200 and "Could not ask Twilio" in page.get_data(as_text=True)


def test_outbound_form_submitted_twice_starts_one_conversation(signed_in):
    """The same form key twice: one chat, and both answers lead to it."""
    page = signed_in.get("/console/outbound").get_data(as_text=True)
    data = {"csrf_token": csrf_from(page), "form_key": form_key(page), "from_number": OURS,
            "to_number": PERSON, "message": "Hello from the console"}  # fmt: skip
    first = signed_in.post("/console/outbound", data=data)
    second = signed_in.post("/console/outbound", data=data)
    assert first.status_code == second.status_code == 302
    assert first.headers["Location"] == second.headers["Location"]
    assert Chat.select().where(Chat.to_number == PERSON).count() == 1


def test_outbound_refusals_are_shown_in_words(signed_in):
    """An opted-out person and a bad number are refused with a sentence, nothing started."""
    Contact.create(our_number=OURS, phone_number=PERSON, opted_out=True, opted_out_at=utcnow())
    page = signed_in.get("/console/outbound").get_data(as_text=True)
    data = {
        "csrf_token": csrf_from(page),
        "form_key": form_key(page),
        "from_number": OURS,
        "to_number": PERSON,
    }
    refused = signed_in.post("/console/outbound", data=data)
    assert refused.status_code == 422 and "opted out" in refused.get_data(as_text=True)
    data["to_number"] = "call me"
    bad = signed_in.post("/console/outbound", data=data)
    assert bad.status_code == 422 and "not a phone number" in bad.get_data(as_text=True)
    assert Chat.select().count() == 0


def test_contacts_show_opt_out_state(signed_in):
    """Each contact with whether texts may go to them."""
    Contact.create(our_number=OURS, phone_number=PERSON, opted_out=True, opted_out_at=utcnow())
    Contact.create(our_number=OURS, phone_number="+15550001234")
    page = signed_in.get("/console/contacts").get_data(as_text=True)
    assert PERSON in page and "opted out" in page and "+15550001234" in page
    only = signed_in.get("/console/contacts?opted_out=1").get_data(as_text=True)
    assert "+15550001234" not in only


class FormValues(HTMLParser):
    """What a browser would submit from a page's agent form: inputs (checked boxes only) and textareas."""

    def __init__(self) -> None:
        """Nothing read yet."""
        super().__init__()
        self.values: dict[str, str] = {}
        self._textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        """Collect an input's value, or start a textarea's."""
        a = dict(attrs)
        if tag == "input" and a.get("name"):
            if a.get("type") == "checkbox":
                if "checked" in a:
                    self.values[a["name"]] = "on"
            else:
                self.values[a["name"]] = a.get("value") or ""
        elif tag == "textarea":
            self._textarea = a.get("name")
            self.values[self._textarea] = ""

    def handle_data(self, data):
        """A textarea's text."""
        if self._textarea:
            self.values[self._textarea] += data

    def handle_endtag(self, tag):
        """A textarea ends."""
        if tag == "textarea":
            self._textarea = None


def agent_form(html: str) -> dict[str, str]:
    """The agent form's fields as a browser would post them unchanged."""
    parser = FormValues()
    parser.feed(html[html.index('class="card agent-form"') :])
    return parser.values


SECRET = "whsec_console_0123456789abcdef"
NEW_SECRET = "whsec_replaced_fedcba9876543210"


def test_agent_form_never_shows_the_webhook_secret(signed_in):
    """The secret is write-only as in the API: the form says it is set, an empty field keeps it, a typed
    value replaces it, "Clear" removes it; neither the stored nor a typed secret is ever in a page."""
    agent = Agent.create(agent_id="agent_hooks", name="Hooks", webhook_secret=SECRET)
    url = "/console/agents/agent_hooks"
    page = signed_in.get(url).get_data(as_text=True)
    assert SECRET not in page
    assert "set (not shown)" in page and 'name="clear_webhook_secret"' in page
    form = agent_form(page)
    assert form["webhook_secret"] == "" and "clear_webhook_secret" not in form

    # Saved as shown, with the secret's field left empty: the secret stays.
    assert signed_in.post(url, data=form).status_code == 302
    assert Agent.get_by_id(agent.agent_id).webhook_secret == SECRET

    # Refused for another field: the page comes back without the secret typed into it, nothing saved.
    refused = signed_in.post(url, data={**form, "webhook_secret": NEW_SECRET, "temperature": "5"})
    assert refused.status_code == 422
    assert NEW_SECRET not in refused.get_data(as_text=True) and SECRET not in refused.get_data(as_text=True)
    assert Agent.get_by_id(agent.agent_id).webhook_secret == SECRET

    # A typed value replaces it (and is not shown either).
    assert signed_in.post(url, data={**form, "webhook_secret": NEW_SECRET}).status_code == 302
    assert Agent.get_by_id(agent.agent_id).webhook_secret == NEW_SECRET
    page = signed_in.get(url).get_data(as_text=True)
    assert NEW_SECRET not in page and "set (not shown)" in page

    # Too short a secret is refused with the API's message.
    short = signed_in.post(url, data={**form, "webhook_secret": "short"})
    assert short.status_code == 422 and "webhook_secret" in short.get_data(as_text=True)
    assert "short" not in agent_form(short.get_data(as_text=True))["webhook_secret"]

    # Clear: null, so EVENTS_WEBHOOK_SECRET signs again (as PATCH webhook_secret: null does).
    assert signed_in.post(url, data={**form, "clear_webhook_secret": "on"}).status_code == 302
    assert Agent.get_by_id(agent.agent_id).webhook_secret is None
    page = signed_in.get(url).get_data(as_text=True)
    assert "not set" in page and 'name="clear_webhook_secret"' not in page


def test_new_agent_form_takes_a_webhook_secret_without_showing_it(signed_in):
    """A secret typed into the new-agent form is stored; the agent's page then only says it is set."""
    form = agent_form(signed_in.get("/console/agents/new").get_data(as_text=True))
    form.update(agent_id="agent_signed", name="Signed", webhook_secret=SECRET)
    created = signed_in.post("/console/agents/new", data=form)
    assert created.status_code == 302
    assert Agent.get_by_id("agent_signed").webhook_secret == SECRET
    page = signed_in.get("/console/agents/agent_signed").get_data(as_text=True)
    assert SECRET not in page and "set (not shown)" in page
    listing = signed_in.get("/console/agents").get_data(as_text=True)
    assert "Signed" in listing and SECRET not in listing
