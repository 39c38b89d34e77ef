"""POST /twilio/status: statuses recorded in order, never back from a final state."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET

import pytest

from gateway.conversations.agents import default_agent
from gateway.storage.models import Chat, Contact, Message
from gateway.twilio.statuses import map_twilio_status
from tests.conftest import post_twilio
from tests.payloads import OUR_NUMBER, PERSON, message_sid, status_callback

STATUS = "/twilio/status"


@pytest.fixture
def outbound(app):
    """An agent's outbound SMS part Twilio accepted (status queued, sid set)."""
    chat = Chat.create(
        agent=default_agent(),
        chat_type="sms_chat",
        from_number=OUR_NUMBER,
        to_number=PERSON,
        ongoing_pair=f"{OUR_NUMBER}|{PERSON}",
    )
    return Message.create(
        chat=chat,
        role="agent",
        content="Hello from the agent",
        twilio_sid=message_sid("SM"),
        status="queued",
        from_number=OUR_NUMBER,
        to_number=PERSON,
        part_index=0,
    )


def post_status(client, sid: str, status: str, **extra: str):
    """Send Twilio's status callback; assert the empty TwiML answer."""
    response = post_twilio(client, STATUS, status_callback(sid, status, **extra))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/xml"
    assert ET.fromstring(response.get_data()).tag == "Response"
    return response


def stored(message: Message) -> Message:
    """The message as stored now."""
    return Message.get_by_id(message.id)


def test_sent_then_delivered(client, outbound):
    """Statuses move forward as Twilio reports them."""
    post_status(client, outbound.twilio_sid, "sent")
    assert stored(outbound).status == "sent"
    post_status(client, outbound.twilio_sid, "delivered")
    assert stored(outbound).status == "delivered"
    assert stored(outbound).error_code is None


def test_late_sent_after_delivered_stays_delivered(client, outbound):
    """Callbacks out of order never move a message back from a final state."""
    post_status(client, outbound.twilio_sid, "delivered")
    post_status(client, outbound.twilio_sid, "sent")
    post_status(client, outbound.twilio_sid, "queued")
    assert stored(outbound).status == "delivered"


def test_final_states_do_not_replace_each_other(client, outbound):
    """A failed message stays failed even if a stray "delivered" arrives later."""
    post_status(client, outbound.twilio_sid, "failed", ErrorCode="30008")
    post_status(client, outbound.twilio_sid, "delivered")
    assert stored(outbound).status == "failed"


def test_failed_records_error_code(client, outbound):
    """ErrorCode (and ErrorMessage when sent) is recorded with the status."""
    post_status(
        client,
        outbound.twilio_sid,
        "failed",
        ErrorCode="30003",
        ErrorMessage="Unreachable destination handset",
    )
    message = stored(outbound)
    assert message.status == "failed"
    assert message.error_code == "30003"
    assert message.error_message == "Unreachable destination handset"


def test_undelivered_with_error(client, outbound):
    """Undelivered is final and keeps its error code."""
    post_status(client, outbound.twilio_sid, "sent")
    post_status(client, outbound.twilio_sid, "undelivered", ErrorCode="30005")
    assert (stored(outbound).status, stored(outbound).error_code) == ("undelivered", "30005")


@pytest.mark.parametrize(
    ("twilio", "ours"),
    [
        ("accepted", "queued"),
        ("scheduled", "queued"),
        ("sending", "queued"),
        ("read", "read"),
        ("canceled", "failed"),
    ],
)
def test_status_mapping(client, outbound, twilio, ours):
    """Twilio's other statuses land on ours."""
    assert map_twilio_status(twilio) == ours
    post_status(client, outbound.twilio_sid, twilio)
    assert stored(outbound).status == ours


def test_unknown_sid_is_200(client, outbound):
    """A callback for a message we do not know is answered 200 (so Twilio stops) and changes nothing."""
    post_status(client, message_sid("SM"), "delivered")
    assert stored(outbound).status == "queued"


def test_unknown_status_is_ignored(client, outbound):
    """A status that is not a delivery state (e.g. receiving) is answered and ignored."""
    post_status(client, outbound.twilio_sid, "receiving")
    assert stored(outbound).status == "queued"


def test_inbound_message_is_never_touched(client, app):
    """A status callback naming an inbound message's sid leaves it "received"."""
    from tests.payloads import inbound_sms

    form = inbound_sms("hi")
    post_twilio(client, "/twilio/sms", form)
    post_status(client, form["MessageSid"], "delivered")
    assert Message.get(Message.twilio_sid == form["MessageSid"]).status == "received"


def test_21610_marks_the_contact_opted_out(client, outbound):
    """Twilio refusing an opted-out recipient (21610) records the opt-out."""
    post_status(client, outbound.twilio_sid, "failed", ErrorCode="21610")
    contact = Contact.get((Contact.our_number == OUR_NUMBER) & (Contact.phone_number == PERSON))
    assert contact.opted_out is True
    assert stored(outbound).error_code == "21610"


def test_bad_signature_is_refused(client, outbound):
    """The status callback needs Twilio's signature too."""
    response = post_twilio(
        client, STATUS, status_callback(outbound.twilio_sid, "delivered"), signature="bogus"
    )
    assert response.status_code == 403
    assert stored(outbound).status == "queued"
    missing = post_twilio(client, STATUS, status_callback(outbound.twilio_sid, "delivered"), signature=None)
    assert missing.status_code == 403


def test_missing_fields_is_400(client):
    """A callback without MessageSid/MessageStatus is refused with a reason."""
    response = post_twilio(client, STATUS, {"AccountSid": "AC" + "0" * 32})
    assert response.status_code == 400
    assert "MessageSid" in response.get_data(as_text=True)


def test_concurrent_callbacks_end_in_the_final_state(app, outbound):
    """sent and delivered racing each other: delivered wins whatever the order."""
    statuses = ["sent", "delivered", "sent", "queued", "sent", "delivered"]
    barrier = threading.Barrier(len(statuses))

    def send(status):
        client = app.test_client()
        barrier.wait()
        post_twilio(client, STATUS, status_callback(outbound.twilio_sid, status))

    threads = [threading.Thread(target=send, args=(s,)) for s in statuses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stored(outbound).status == "delivered"


def test_part_marked_sending_moves_on(client, outbound):
    """A part still carrying the worker's "sending" mark accepts Twilio's next status."""
    Message.update(status="sending").where(Message.id == outbound.id).execute()
    post_status(client, outbound.twilio_sid, "sent")
    assert stored(outbound).status == "sent"


def test_callback_before_the_sid_is_stored_is_applied_when_it_is(client, outbound):
    """Twilio can report "delivered" before the worker stored the SID its send returned: kept, not lost."""
    from gateway.twilio.statuses import apply_early_statuses

    early_sid = message_sid("SM")
    post_status(client, early_sid, "sent")
    post_status(client, early_sid, "delivered")
    # The worker stores the SID a moment later, then applies what arrived meanwhile.
    Message.update(twilio_sid=early_sid).where(Message.id == outbound.id).execute()
    assert apply_early_statuses(early_sid) == 2
    assert stored(outbound).status == "delivered"
    assert apply_early_statuses() == 0  # nothing left for the sweep
