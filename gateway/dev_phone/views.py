"""The dev phone: a phone-like page that texts our numbers through the Twilio emulator."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from gateway.console.auth import csrf_ok
from gateway.dev_phone.emulator import MAX_MEDIA_BYTES, TwilioEmulator
from gateway.storage.models import PhoneNumber
from gateway.twilio.media import sniff_image_type

bp = Blueprint(
    "dev_phone",
    __name__,
    url_prefix="/dev/phone",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

# "Your" number on the dev phone unless you pick another.
DEFAULT_PERSON = "+15555550100"
MAX_TEXT = 1600


def emulator() -> TwilioEmulator:
    """The emulator `smsgw dev` started."""
    return current_app.config["TWILIO_EMULATOR"]


def our_numbers() -> list[str]:
    """The gateway's numbers the emulator knows (each registered number is provisioned there)."""
    emu = emulator()
    for row in PhoneNumber.select(PhoneNumber.phone_number):
        if emu.number(row.phone_number) is None:
            # Added after start (API or console): Twilio would have it once bought; so does the emulator.
            emu.add_number(row.phone_number)
    return emu.our_numbers()


@bp.get("/")
def phone():
    """The phone page."""
    return render_template("dev_phone/phone.html", ours=our_numbers(), person=DEFAULT_PERSON)


@bp.get("/thread.json")
def thread():
    """The texts between `me` and `ours`, oldest first, as the phone shows them."""
    me, ours = request.args.get("me", ""), request.args.get("ours", "")
    items = []
    for m in emulator().thread(me, ours):
        items.append(
            {
                "sid": m["sid"],
                "mine": m["from"] == me,
                "body": m["body"],
                "status": m["status"],
                "note": m.get("note"),
                "media": [_media_path(url) for url in m.get("media_urls", [])],
            }
        )
    number = emulator().number(ours)
    return jsonify(items=items, webhook=(number or {}).get("sms_url") or None)


def _media_path(url: str) -> str | None:
    """The page's URL of an attachment the emulator holds (None: elsewhere)."""
    emu = emulator()
    if url.startswith(emu.url):
        return "/dev/phone/media/" + url.rsplit("/", 1)[-1]
    return None


@bp.get("/media/<media_sid>")
def media(media_sid: str):
    """An image the phone sent or received (held by the emulator)."""
    item = emulator().media.get(media_sid)
    if item is None:
        return Response("no such media\n", 404, mimetype="text/plain")
    response = Response(item[1], mimetype=item[0])
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.post("/send")
def send():
    """The phone sends a text (and maybe an image) from `me` to `ours`."""
    if not csrf_ok():
        return jsonify(error="This page's security token is missing or out of date: reload it."), 400
    me = (request.form.get("me") or "").strip()
    ours = (request.form.get("ours") or "").strip()
    body = (request.form.get("body") or "").strip()
    if not me.startswith("+") or not me[1:].isdigit() or not 8 <= len(me) <= 16:
        return jsonify(error="Your number must be in E.164 form, like +15555550100."), 422
    if ours not in our_numbers():
        return jsonify(error=f"{ours or 'That'} is not one of the gateway's numbers."), 422
    if len(body) > MAX_TEXT:
        return jsonify(error=f"A text holds at most {MAX_TEXT} characters."), 422
    attachments = []
    upload = request.files.get("image")
    if upload is not None and upload.filename:
        data = upload.read(MAX_MEDIA_BYTES + 1)
        content_type = sniff_image_type(data)
        if len(data) > MAX_MEDIA_BYTES or content_type is None:
            return jsonify(error="Attach a JPEG, PNG, GIF or WebP image of at most 5 MB."), 422
        attachments.append((content_type, data))
    if not body and not attachments:
        return jsonify(error="Type a text or attach an image."), 422
    message = emulator().text_from_phone(me, ours, body, attachments)
    return jsonify(sid=message["sid"], note=message.get("note"))
