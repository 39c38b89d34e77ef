"""The console's contacts: the people who texted us with their opt-out state, and one person's page
where an operator sets or lifts an opt-out, exports what is stored about them, or erases it all.

The work is gateway/conversations/contacts.py's, as for the API and `smsgw contacts`; the export is
the very JSON `GET /v1/contacts/{n}/export` answers, as a download.
"""

from __future__ import annotations

import json

from flask import Response, abort, current_app, flash, redirect, render_template, request, url_for

from gateway.api.schemas import ContactExport, normalize_e164
from gateway.console import bp
from gateway.conversations import contacts as people
from gateway.storage.models import Contact, PhoneNumber

CONTACTS_PAGE = 100


@bp.get("/contacts")
def contacts():
    """The people who texted our numbers, with their opt-out state (search by number)."""
    query = Contact.select().order_by(Contact.id.desc())  # newest first; `before` pages by id
    search = "".join(c for c in (request.args.get("q") or "") if c.isdigit())
    if search:
        query = query.where(Contact.phone_number.contains(search))
    if request.args.get("opted_out") == "1":
        query = query.where(Contact.opted_out == True)  # noqa: E712 - peewee expression
    before = request.args.get("before", type=int)
    if before:
        query = query.where(Contact.id < before)
    rows = list(query.limit(CONTACTS_PAGE + 1))
    more = len(rows) > CONTACTS_PAGE
    rows = rows[:CONTACTS_PAGE]
    return render_template(
        "console/contacts.html",
        rows=rows,
        q=request.args.get("q") or "",
        opted_out=request.args.get("opted_out") == "1",
        next_url=url_for("console.contacts", before=rows[-1].id, q=request.args.get("q") or None)
        if more
        else None,
    )


def person_or_404(phone_number: str) -> str:
    """The number in the URL in E.164 form, or a 404 page (it is no valid number)."""
    phone = normalize_e164(phone_number.strip())
    if phone is None:
        abort(404)
    return phone


def counted(count: int, one: str, many: str | None = None) -> str:
    """'1 chat', '3 chats'."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


@bp.get("/contacts/<phone_number>")
def person(phone_number: str):
    """One person: opt-out state per our number, their chats, profile; Export and Erase."""
    phone = person_or_404(phone_number)
    summary = people.contact_summary(phone)
    ours = [n.phone_number for n in PhoneNumber.select().order_by(PhoneNumber.phone_number)]
    return render_template("console/person.html", phone=phone, summary=summary, ours=ours)


@bp.post("/contacts/<phone_number>/opt-out")
def person_opt_out(phone_number: str):
    """Put the person on (or take them off) one of our numbers' do-not-text list."""
    phone = person_or_404(phone_number)
    our_number = normalize_e164((request.form.get("our_number") or "").strip())
    if our_number is None or PhoneNumber.get_or_none(PhoneNumber.phone_number == our_number) is None:
        sent = request.form.get("our_number") or "That"
        flash(f"{sent} is not one of the gateway's numbers: nothing changed.")
        return redirect(url_for("console.person", phone_number=phone))
    opted_out = request.form.get("opted_out") == "1"
    people.set_opt_out(phone, our_number, opted_out)
    if opted_out:
        flash(f"{phone} is opted out of texts from {our_number}, as if they had texted STOP.")
    else:
        flash(f"{phone} may get texts from {our_number} again.")
    return redirect(url_for("console.person", phone_number=phone))


@bp.get("/contacts/<phone_number>/export")
def person_export(phone_number: str) -> Response:
    """Everything stored about the person, as the API's export JSON, downloaded as a file."""
    phone = person_or_404(phone_number)
    export = ContactExport.model_validate(people.export_person(phone)).model_dump(mode="json")
    response = Response(json.dumps(export, ensure_ascii=False, indent=2) + "\n", mimetype="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="contact-{phone.lstrip("+")}.json"'
    response.headers["Cache-Control"] = "no-store"  # personal data: never kept by a cache
    return response


def erasure_preview(phone: str) -> list[str]:
    """What erasing the person would delete, in words (from the export, so both agree)."""
    export = people.export_person(phone)
    messages = [m for chat in export["chats"] for m in chat["messages"]] + export["other_messages"]
    with_media = sum(1 for m in messages if m.get("media"))
    numbers = ", ".join(c["our_number"] for c in export["contacts"])
    lines = [
        counted(len(export["chats"]), "chat") + " with their transcripts",
        counted(len(messages), "message") + (f" ({with_media} with media references)" if with_media else ""),
        f"their opt-out state for {counted(len(export['contacts']), 'of our numbers', 'of our numbers')}"
        + (f" ({numbers})" if numbers else ""),
        counted(len(export["profiles"]), "profile") + " the agent remembers them by",
        counted(len(export["idempotency_keys"]), "idempotency key") + " of outbound starts to them",
        "any job still queued for them",
    ]
    return lines


@bp.get("/contacts/<phone_number>/erase")
def person_erase_confirm(phone_number: str):
    """The confirm step: what erasing this person will delete."""
    phone = person_or_404(phone_number)
    return render_template("console/erase.html", phone=phone, preview=erasure_preview(phone))


@bp.post("/contacts/<phone_number>/erase")
def person_erase(phone_number: str):
    """Erase everything stored about the person; say what was deleted."""
    phone = person_or_404(phone_number)
    counts = people.erase_person(
        phone,
        current_app.task_queue,  # type: ignore[attr-defined]
        current_app.config["SETTINGS"],
    )
    flash(
        f"Erased everything stored about {phone}: "
        + ", ".join(
            [
                counted(counts["chats"], "chat"),
                counted(counts["messages"], "message"),
                counted(counts["contacts"], "opt-out record"),
                counted(counts["profiles"], "profile"),
                counted(counts["idempotency_keys"], "idempotency key"),
                counted(counts["jobs"], "queued job"),
            ]
        )
        + "."
    )
    return redirect(url_for("console.contacts"))
