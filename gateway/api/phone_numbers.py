"""Phone numbers: which agent answers texts to each of our Twilio numbers, and which starts them."""

from __future__ import annotations

from peewee import IntegrityError

from gateway.api.agents import agent_for_field
from gateway.api.contract import PathParam, operation
from gateway.api.errors import conflict, not_found
from gateway.api.schemas import PhoneNumber as PhoneNumberOut
from gateway.api.schemas import PhoneNumberCreate, PhoneNumberList, PhoneNumberUpdate, normalize_e164
from gateway.api.serializers import phone_number_out
from gateway.storage.db import database
from gateway.storage.models import PhoneNumber, utcnow


def _columns(body: PhoneNumberUpdate) -> dict:
    """The fields sent, as model columns, after checking each agent exists (422 naming the field)."""
    columns = {}
    for field in body.model_fields_set:
        value = getattr(body, field)
        if field in ("inbound_agent_id", "outbound_agent_id"):
            agent = agent_for_field(field, value)
            columns[field.removesuffix("_id")] = agent.agent_id if agent is not None else None
        elif field != "phone_number":
            columns[field] = value
    return columns


def get_number_or_404(phone_number: str) -> PhoneNumber:
    """The number named in the URL (any formatting of a valid number), or 404."""
    normalized = normalize_e164(phone_number)
    number = PhoneNumber.get_or_none(PhoneNumber.phone_number == normalized) if normalized else None
    if number is None:
        raise not_found("phone number", phone_number)
    return number


PHONE_NUMBER = {
    "phone_number": PathParam(
        {"type": "string"}, "The number in E.164 form (`+` may be sent as is or as %2B).", get_number_or_404
    )
}


@operation(
    "POST",
    "/phone-numbers",
    operation_id="createPhoneNumber",
    tag="phone numbers",
    summary="Register one of our Twilio numbers",
    body=PhoneNumberCreate,
    ok=(201, PhoneNumberOut, "The number."),
    errors={409: "The number is registered already (`phone_number_exists`)."},
)
def create_phone_number(body: PhoneNumberCreate) -> PhoneNumberOut:
    """Register one of our numbers; 201 with it."""
    columns = _columns(body)
    now = utcnow()
    try:
        with database.atomic():
            number = PhoneNumber.create(
                phone_number=body.phone_number, created_at=now, updated_at=now, **columns
            )
    except IntegrityError:
        raise conflict("phone_number_exists", f"{body.phone_number} is already registered.") from None
    return phone_number_out(number)


@operation(
    "GET",
    "/phone-numbers",
    operation_id="listPhoneNumbers",
    tag="phone numbers",
    summary="List our numbers",
    ok=(200, PhoneNumberList, "Every number."),
)
def list_phone_numbers() -> PhoneNumberList:
    """Every registered number, in order."""
    numbers = PhoneNumber.select().order_by(PhoneNumber.phone_number)
    return PhoneNumberList(items=[phone_number_out(n) for n in numbers])


@operation(
    "GET",
    "/phone-numbers/<phone_number>",
    operation_id="getPhoneNumber",
    tag="phone numbers",
    summary="Get a number",
    ok=(200, PhoneNumberOut, "The number."),
    path_params=PHONE_NUMBER,
)
def get_phone_number(phone_number: str) -> PhoneNumberOut:
    """One number."""
    return phone_number_out(get_number_or_404(phone_number))


@operation(
    "PATCH",
    "/phone-numbers/<phone_number>",
    operation_id="updatePhoneNumber",
    tag="phone numbers",
    summary="Change a number's agents, timezone, Messaging Service or send rate",
    body=PhoneNumberUpdate,
    ok=(200, PhoneNumberOut, "The number."),
    path_params=PHONE_NUMBER,
)
def update_phone_number(phone_number: str, body: PhoneNumberUpdate) -> PhoneNumberOut:
    """Change the fields sent (an agent null: the default agent answers)."""
    number = get_number_or_404(phone_number)
    columns = _columns(body)
    if columns:
        columns["updated_at"] = utcnow()
        changed = (
            PhoneNumber.update(**columns).where(PhoneNumber.phone_number == number.phone_number).execute()
        )
        number = PhoneNumber.get_or_none(PhoneNumber.phone_number == number.phone_number) if changed else None
        if number is None:  # deleted meanwhile
            raise not_found("phone number", phone_number)
    return phone_number_out(number)


@operation(
    "DELETE",
    "/phone-numbers/<phone_number>",
    operation_id="deletePhoneNumber",
    tag="phone numbers",
    summary="Forget a number (its chats stay)",
    ok=(204, None, "Deleted."),
    path_params=PHONE_NUMBER,
)
def delete_phone_number(phone_number: str) -> None:
    """Forget a number; its chats stay."""
    number = get_number_or_404(phone_number)
    PhoneNumber.delete().where(PhoneNumber.phone_number == number.phone_number).execute()
    return None
