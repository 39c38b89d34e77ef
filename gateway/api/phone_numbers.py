"""Phone numbers: which agent answers texts to each of our Twilio numbers, and which starts them."""

from __future__ import annotations

from flask import jsonify
from peewee import IntegrityError

from gateway.api import bp
from gateway.api.agents import agent_for_field
from gateway.api.errors import conflict, not_found
from gateway.api.serializers import phone_number_json
from gateway.api.validation import Field, e164, json_body, normalize_e164, string, validate
from gateway.storage.db import database
from gateway.storage.models import PhoneNumber, utcnow

AGENT_REF = string(max_length=64, nullable=True)
UPDATE_FIELDS: dict[str, Field] = {
    "inbound_agent_id": Field(AGENT_REF),
    "outbound_agent_id": Field(AGENT_REF),
}
CREATE_FIELDS: dict[str, Field] = {"phone_number": Field(e164(), required=True), **UPDATE_FIELDS}


def _agent_columns(data: dict) -> dict:
    """Body fields to model columns, after checking each agent exists (422 naming the field)."""
    columns = {}
    for field in ("inbound_agent_id", "outbound_agent_id"):
        if field in data:
            agent = agent_for_field(field, data[field])
            columns[field.removesuffix("_id")] = agent.agent_id if agent is not None else None
    return columns


def get_number_or_404(phone_number: str) -> PhoneNumber:
    """The number named in the URL (any formatting of a valid number), or 404."""
    normalized = normalize_e164(phone_number)
    number = PhoneNumber.get_or_none(PhoneNumber.phone_number == normalized) if normalized else None
    if number is None:
        raise not_found("phone number", phone_number)
    return number


@bp.post("/phone-numbers")
def create_phone_number():
    """Register one of our numbers; 201 with it."""
    data = validate(json_body(), CREATE_FIELDS)
    columns = _agent_columns(data)
    now = utcnow()
    try:
        with database.atomic():
            number = PhoneNumber.create(
                phone_number=data["phone_number"], created_at=now, updated_at=now, **columns
            )
    except IntegrityError:
        raise conflict("phone_number_exists", f"{data['phone_number']} is already registered.") from None
    return jsonify(phone_number_json(number)), 201


@bp.get("/phone-numbers")
def list_phone_numbers():
    """Every registered number, in order."""
    numbers = PhoneNumber.select().order_by(PhoneNumber.phone_number)
    return jsonify(items=[phone_number_json(n) for n in numbers])


@bp.get("/phone-numbers/<phone_number>")
def get_phone_number(phone_number: str):
    """One number."""
    return jsonify(phone_number_json(get_number_or_404(phone_number)))


@bp.patch("/phone-numbers/<phone_number>")
def update_phone_number(phone_number: str):
    """Change a number's agents (null: the default agent answers)."""
    number = get_number_or_404(phone_number)
    data = validate(json_body(allow_empty=True), UPDATE_FIELDS, partial=True)
    columns = _agent_columns(data)
    if columns:
        columns["updated_at"] = utcnow()
        PhoneNumber.update(**columns).where(PhoneNumber.phone_number == number.phone_number).execute()
        number = PhoneNumber.get_by_id(number.phone_number)
    return jsonify(phone_number_json(number))


@bp.delete("/phone-numbers/<phone_number>")
def delete_phone_number(phone_number: str):
    """Forget a number; its chats stay."""
    number = get_number_or_404(phone_number)
    PhoneNumber.delete().where(PhoneNumber.phone_number == number.phone_number).execute()
    return "", 204
