"""The console's numbers, outbound and contacts pages (both backends, Flask's test client)."""

from __future__ import annotations

import re

import pytest

from gateway.storage.models import Chat, Contact, PhoneNumber, utcnow
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
