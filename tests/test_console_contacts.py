"""The console's person page: opt-out per our number, Export (the API's JSON as a download) and Erase
(a confirm step naming what goes, then the result in words). Both backends, Flask's test client."""

from __future__ import annotations

import json

import pytest

from gateway.storage.models import Chat, Contact, Message, PhoneNumber
from tests.conftest import GATEWAY_API_KEY, post_twilio
from tests.payloads import OTHER_PERSON, OUR_NUMBER, PERSON, inbound_mms, inbound_sms
from tests.test_console import csrf_from, sign_in

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
SECOND_NUMBER = "+15005550001"


@pytest.fixture
def stored(client, app):
    """Our numbers; the person texted twice (one picture), and somebody else once."""
    PhoneNumber.create(phone_number=OUR_NUMBER)
    PhoneNumber.create(phone_number=SECOND_NUMBER)
    assert post_twilio(client, "/twilio/sms", inbound_sms("Hi, I am Ada")).status_code == 200
    form = inbound_mms("my cat", [("https://api.twilio.com/media/ME1", "image/png")])
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    assert post_twilio(client, "/twilio/sms", inbound_sms("me too", From=OTHER_PERSON)).status_code == 200
    return client


@pytest.fixture
def operator(stored):
    """The same client, signed in to the console."""
    sign_in(stored)
    return stored


def token(client) -> str:
    """The session's CSRF token, read from the person page."""
    return csrf_from(client.get(f"/console/contacts/{PERSON}").get_data(as_text=True))


def test_person_page_sets_and_lifts_an_opt_out(operator):
    """Opt out from a number they never texted, then lift it; each says what it did."""
    page = operator.get(f"/console/contacts/{PERSON}").get_data(as_text=True)
    assert "allowed" in page and OUR_NUMBER in page and "Export" in page and "Erase" in page
    sent = {"csrf_token": csrf_from(page), "our_number": SECOND_NUMBER, "opted_out": "1"}
    page = operator.post(f"/console/contacts/{PERSON}/opt-out", data=sent, follow_redirects=True)
    assert f"{PERSON} is opted out of texts from {SECOND_NUMBER}" in page.get_data(as_text=True)
    assert Contact.get(Contact.phone_number == PERSON, Contact.our_number == SECOND_NUMBER).opted_out
    sent["opted_out"] = "0"
    page = operator.post(f"/console/contacts/{PERSON}/opt-out", data=sent, follow_redirects=True)
    assert f"{PERSON} may get texts from {SECOND_NUMBER} again" in page.get_data(as_text=True)
    assert not Contact.get(Contact.phone_number == PERSON, Contact.our_number == SECOND_NUMBER).opted_out
    # Not one of ours: nothing changes, and the page says why.
    sent.update(our_number="+14155550100", opted_out="1")
    page = operator.post(f"/console/contacts/{PERSON}/opt-out", data=sent, follow_redirects=True)
    assert "+14155550100 is not one of the gateway&#39;s numbers" in page.get_data(as_text=True)
    assert Contact.get_or_none(Contact.our_number == "+14155550100") is None


def test_export_downloads_what_the_api_exports(operator):
    """An attachment holding the API's export JSON (the same but for the moment it was taken)."""
    response = operator.get(f"/console/contacts/{PERSON}/export")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == f'attachment; filename="contact-{PERSON[1:]}.json"'
    downloaded = json.loads(response.get_data(as_text=True))
    api = operator.get(f"/v1/contacts/{PERSON}/export", headers=AUTH).get_json()
    assert {**downloaded, "exported_at": None} == {**api, "exported_at": None}
    assert [m["content"] for m in downloaded["chats"][0]["messages"]][:2] == ["Hi, I am Ada", "my cat"]


def test_erase_names_what_goes_then_erases_and_says_what_went(operator):
    """The confirm page lists what will be deleted; erasing removes the person's chats, keeps others'."""
    chat_list = operator.get("/console/chats").get_data(as_text=True)
    assert PERSON in chat_list and OTHER_PERSON in chat_list
    page = operator.get(f"/console/contacts/{PERSON}/erase").get_data(as_text=True)
    for words in ("1 chat with their transcripts", "(1 with media references)", "1 of our numbers",
                  f"({OUR_NUMBER})", "any job still queued for them", "cannot be undone"):  # fmt: skip
        assert words in page
    assert Chat.select().where(Chat.to_number == PERSON).count() == 1  # looking deletes nothing
    response = operator.post(f"/console/contacts/{PERSON}/erase", data={"csrf_token": csrf_from(page)})
    assert response.status_code == 302 and response.headers["Location"].endswith("/console/contacts")
    shown = operator.get(response.headers["Location"]).get_data(as_text=True)
    assert f"Erased everything stored about {PERSON}: 1 chat," in shown
    assert "1 opt-out record" in shown
    assert Chat.select().where(Chat.to_number == PERSON).count() == 0
    assert Message.select().where(Message.from_number == PERSON).count() == 0
    chat_list = operator.get("/console/chats").get_data(as_text=True)
    assert PERSON not in chat_list and OTHER_PERSON in chat_list


def test_actions_need_the_session_and_its_csrf_token(stored):
    """Anonymous: every page sends to sign-in and every action is refused. Signed in without the
    CSRF token: refused in words. Nothing is erased or changed either way."""
    for url in (f"/console/contacts/{PERSON}", f"/console/contacts/{PERSON}/export",
                f"/console/contacts/{PERSON}/erase"):  # fmt: skip
        response = stored.get(url)
        assert response.status_code == 302 and "/console/sign-in" in response.headers["Location"]
    anonymous_token = csrf_from(stored.get("/console/sign-in").get_data(as_text=True))
    for action in ("erase", "opt-out"):
        sent = {"our_number": OUR_NUMBER, "opted_out": "1"}
        assert stored.post(f"/console/contacts/{PERSON}/{action}", data=sent).status_code == 400
        with_token = stored.post(
            f"/console/contacts/{PERSON}/{action}", data={**sent, "csrf_token": anonymous_token}
        )
        assert with_token.status_code == 401 and PERSON not in with_token.get_data(as_text=True)
    sign_in(stored)
    for action in ("erase", "opt-out"):
        refused = stored.post(
            f"/console/contacts/{PERSON}/{action}", data={"our_number": OUR_NUMBER, "opted_out": "1"}
        )
        assert refused.status_code == 400
        assert "security token is missing" in refused.get_data(as_text=True)
    assert Chat.select().where(Chat.to_number == PERSON).count() == 1
    assert not Contact.get(Contact.phone_number == PERSON).opted_out


def test_an_invalid_number_is_a_404_page(operator):
    """A URL naming no valid number is not found (never a 500)."""
    assert operator.get("/console/contacts/12345").status_code == 404
    response = operator.post("/console/contacts/nope/erase", data={"csrf_token": token(operator)})
    assert response.status_code == 404
