"""A person by their phone number: their opt-out state per our number, chats and profile; the
do-not-text list; export and erasure (gateway/conversations/contacts.py does the work)."""

from __future__ import annotations

from flask import current_app

from gateway.agent.text import STRIPPED
from gateway.api.contract import PathParam, operation
from gateway.api.errors import invalid_field, not_found
from gateway.api.schemas import Contact, ContactErased, ContactExport, ContactOptOut, normalize_e164
from gateway.api.serializers import chat_out, iso
from gateway.conversations import contacts
from gateway.storage.models import PhoneNumber


def person_or_422(phone_number: str) -> str:
    """The number in the URL in E.164 form (any spelling of a valid number), or 422."""
    normalized = normalize_e164(phone_number.strip())
    if normalized is None:
        raise invalid_field("phone_number", f"{phone_number!r} is not a valid phone number in E.164 form")
    return normalized


PERSON = {
    "phone_number": PathParam(
        {"type": "string", "pattern": f"^[{STRIPPED}]*\\+"},
        "The person's number in E.164 form (`+` may be sent as is or as %2B).",
        person_or_422,
    )
}


def contact_out(phone: str) -> Contact:
    """The person as the API shows them."""
    summary = contacts.contact_summary(phone)
    numbers = [
        {
            **number,
            "opted_out_at": iso(number["opted_out_at"]),
            "first_contact_at": iso(number["first_contact_at"]),
        }
        for number in summary["numbers"]
    ]
    return Contact.model_validate(
        {**summary, "numbers": numbers, "chats": [chat_out(chat) for chat in summary["chats"]]}
    )


@operation(
    "GET",
    "/contacts/<phone_number>",
    operation_id="getContact",
    tag="contacts",
    summary="A person: opt-out state per our number, their chats and profile",
    ok=(200, Contact, "What the gateway holds about the person."),
    errors={404: "Nothing is stored about this number.", 422: "The number is not a valid phone number."},
    path_params=PERSON,
)
def get_contact(phone_number: str) -> Contact:
    """The person's opt-out state per our number, their chats (newest last) and profile."""
    found = contact_out(person_or_422(phone_number))
    if not (found.numbers or found.chats or found.profile is not None):
        raise not_found("contact", phone_number)
    return found


@operation(
    "PUT",
    "/contacts/<phone_number>/opt-out",
    operation_id="setContactOptOut",
    tag="contacts",
    summary="Put a person on (or take them off) a number's do-not-text list",
    description="`opted_out: true` makes `POST /v1/sms-chats` refuse to text them from `our_number` and "
    "stops the agent answering them there, as if they had texted STOP; `false` lifts it.",
    body=ContactOptOut,
    ok=(200, Contact, "The person, as now stored."),
    errors={422: "The number is not valid, or `our_number` is not one of the gateway's numbers."},
    path_params=PERSON,
)
def set_contact_opt_out(phone_number: str, body: ContactOptOut) -> Contact:
    """Set the person's opt-out state for one of our numbers."""
    phone = person_or_422(phone_number)
    if PhoneNumber.get_or_none(PhoneNumber.phone_number == body.our_number) is None:
        raise invalid_field("our_number", f"{body.our_number} is not one of the gateway's numbers")
    contacts.set_opt_out(phone, body.our_number, body.opted_out)
    return contact_out(phone)


@operation(
    "GET",
    "/contacts/<phone_number>/export",
    operation_id="exportContact",
    tag="contacts",
    summary="Everything stored about a person, as JSON",
    ok=(200, ContactExport, "Contacts, chats with every message and media reference, profiles, keys."),
    errors={422: "The number is not a valid phone number."},
    path_params=PERSON,
)
def export_contact(phone_number: str) -> ContactExport:
    """Everything stored about the person."""
    return ContactExport.model_validate(contacts.export_person(person_or_422(phone_number)))


@operation(
    "DELETE",
    "/contacts/<phone_number>",
    operation_id="eraseContact",
    tag="contacts",
    summary="Erase everything stored about a person",
    description="Chats, messages and their media references, profile, opt-out state, idempotency keys and "
    "queued jobs. Their opt-out is forgotten too (Twilio's own STOP list still applies).",
    ok=(200, ContactErased, "How many of each were deleted."),
    errors={422: "The number is not a valid phone number."},
    path_params=PERSON,
)
def erase_contact(phone_number: str) -> ContactErased:
    """Erase the person."""
    counts = contacts.erase_person(
        person_or_422(phone_number),
        current_app.task_queue,  # type: ignore[attr-defined]
        current_app.config["SETTINGS"],
    )
    return ContactErased(erased=counts)
