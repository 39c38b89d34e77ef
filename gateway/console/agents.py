"""The console's agents: list, create and edit every setting, validated by the API's own contract.

The form is built from the API's agent model (gateway/api/schemas.py `AgentSettings`): one input
per field, typed by the field's annotation. A submitted form is turned into the JSON types the API
takes and checked by `AgentCreate`/`AgentUpdate`, so the page shows the API's own messages (the
field at fault is named and marked); saving goes through the API's operation itself.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from pydantic import BaseModel, ValidationError

from gateway.api import agents as api_agents
from gateway.api.contract import validation_error
from gateway.api.errors import ApiError
from gateway.api.schemas import AgentCreate, AgentSettings, AgentUpdate
from gateway.console import bp
from gateway.storage.models import Agent

# Write-only settings (the API never shows them): the form says whether one is set, never its value;
# left empty it keeps the stored one, typed it replaces it, "clear_<name>" sets it to null.
WRITE_ONLY = {"webhook_secret"}
# Text settings long enough for a textarea (lists and objects are JSON in a textarea too).
LONG_TEXT = {
    "system_prompt",
    "auto_close_message",
    "help_message",
    "fallback_message",
    "limit_notice_message",
}


def _types(annotation: Any) -> set[type]:
    """The plain types an annotation allows: `int | None` -> {int, NoneType}."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found: set[type] = set()
        for arg in typing.get_args(annotation):
            found |= _types(arg)
        return found
    if origin is not None:
        return {origin}
    return {annotation} if isinstance(annotation, type) else {object}


def form_fields() -> list[dict[str, Any]]:
    """One entry per agent setting: its name, input kind, whether it may be empty, its help text."""
    fields = []
    for name, info in AgentSettings.model_fields.items():
        allowed = _types(info.annotation)
        nullable = type(None) in allowed
        allowed.discard(type(None))
        if name in WRITE_ONLY:
            kind = "secret"
        elif allowed == {bool}:
            kind = "checkbox"
        elif allowed <= {int}:
            kind = "integer"
        elif allowed <= {int, float}:
            kind = "number"
        elif allowed <= {str}:
            kind = "textarea" if name in LONG_TEXT else "text"
        else:
            kind = "json"
        fields.append({"name": name, "kind": kind, "nullable": nullable, "help": info.description or ""})
    return fields


def shown_value(agent: Agent | None, field: dict[str, Any]) -> Any:
    """What an input shows for an agent's setting (a new agent: the API's default); a write-only
    setting shows only whether it is set."""
    name = field["name"]
    if field["kind"] == "secret":
        return bool(agent is not None and getattr(agent, name))
    value = (
        getattr(agent, name)
        if agent is not None
        else AgentSettings.model_fields[name].get_default(call_default_factory=True)
    )
    if field["kind"] == "json":
        return "" if value is None else json.dumps(value, indent=1)
    return value


def body_from_form(form, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The submitted form as the JSON body the API takes (empty optional inputs are null)."""
    body: dict[str, Any] = {}
    for field in fields:
        name, kind = field["name"], field["kind"]
        if kind == "checkbox":
            body[name] = form.get(name) == "on"
            continue
        raw = form.get(name, "")
        if kind == "secret":
            if raw.strip():
                body[name] = raw.strip()
            elif form.get(f"clear_{name}") == "on":
                body[name] = None
            continue  # empty: not sent, so the stored value stays
        if raw.strip() == "" and field["nullable"]:
            body[name] = None
        elif kind == "integer":
            body[name] = _number(raw, int)
        elif kind == "number":
            body[name] = _number(raw, float)
        elif kind == "json":
            try:
                body[name] = json.loads(raw) if raw.strip() else []
            except ValueError:
                raise ApiError(422, "validation_error", f"{name}: is not valid JSON", field=name) from None
        else:
            body[name] = raw.replace("\r\n", "\n")
    return body


def _number(raw: str, kind: type) -> Any:
    """A number typed in a form, or the text as typed (the API's check then names the field)."""
    try:
        return kind(raw.strip())
    except ValueError:
        return raw


def checked(model: type[BaseModel], body: dict[str, Any]) -> BaseModel:
    """The body checked by the API's model; ApiError with the API's message when it is refused."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, unknown="is not a known field") from None


@bp.get("/agents")
def agents():
    """Every live agent."""
    rows = list(Agent.select().where(Agent.deleted_at.is_null()).order_by(Agent.name, Agent.agent_id))
    return render_template("console/agents.html", agents=rows)


@bp.route("/agents/new", methods=["GET", "POST"])
def new_agent():
    """Create an agent from the form."""
    fields = form_fields()
    error = None
    if request.method == "POST":
        try:
            body = body_from_form(request.form, fields)
            if request.form.get("agent_id", "").strip():
                body["agent_id"] = request.form["agent_id"].strip()
            created = api_agents.create_agent.__wrapped__(body=checked(AgentCreate, body))
            flash(f"Agent {created.name or created.agent_id} created.")
            return redirect(url_for("console.edit_agent", agent_id=created.agent_id))
        except ApiError as exc:
            error = exc
    return _form(None, fields, error)


@bp.route("/agents/<agent_id>", methods=["GET", "POST"])
def edit_agent(agent_id: str):
    """Edit every setting of an agent."""
    agent = api_agents.live_agent(agent_id)
    if agent is None:
        flash(f"No agent with id {agent_id!r}.")
        return redirect(url_for("console.agents"))
    fields = form_fields()
    error = None
    if request.method == "POST":
        try:
            body = checked(AgentUpdate, body_from_form(request.form, fields))
            # The API's own operation does the update (its __wrapped__ skips reading an HTTP body).
            api_agents.update_agent.__wrapped__(agent_id=agent.agent_id, body=body)
            flash("Saved.")
            return redirect(url_for("console.edit_agent", agent_id=agent.agent_id))
        except ApiError as exc:
            error = exc
    return _form(agent, fields, error)


def _form(agent: Agent | None, fields: list[dict[str, Any]], error: ApiError | None):
    """The agent form, with the submitted values and the API's message when it was refused."""
    values = {}
    for field in fields:
        if field["kind"] == "secret":
            values[field["name"]] = shown_value(agent, field)  # never what was typed
        elif error is not None and request.method == "POST":
            values[field["name"]] = (
                request.form.get(field["name"]) == "on"
                if field["kind"] == "checkbox"
                else request.form.get(field["name"], "")
            )
        else:
            values[field["name"]] = shown_value(agent, field)
    page = render_template(
        "console/agent.html", agent=agent, fields=fields, values=values, error=error,
        agent_id=request.form.get("agent_id", "") if agent is None else agent.agent_id,
    )  # fmt: skip
    return page, (error.status if error is not None else 200)
