"""Baselines for the webhook benchmark, served by gunicorn with the gateway's exact settings.

- POST /twilio/sms: the least a correct Twilio webhook can do, validate X-Twilio-Signature with
  twilio's RequestValidator and answer an empty `<Response/>`. The gateway's webhook does this plus
  its real work (recording the message, finding the chat, enqueueing the reply): the ratio of the
  two is what that work costs.
- POST /tutorial/sms: the "tutorial" webhook that calls the model inside the request and answers
  with TwiML `<Message>`: it shows why the gateway enqueues instead.

Settings come from the environment: TWILIO_AUTH_TOKEN, PUBLIC_BASE_URL (the signed origin), and for
the tutorial route OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from xml.sax.saxutils import escape

from flask import Flask, Response, request
from twilio.request_validator import RequestValidator

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """The baseline app; nothing happens at import time."""
    app = Flask(__name__)
    app.config.from_mapping(
        TWILIO_AUTH_TOKEN=os.environ.get("TWILIO_AUTH_TOKEN", ""),
        PUBLIC_BASE_URL=os.environ.get("PUBLIC_BASE_URL", "").rstrip("/"),
        OPENAI_BASE_URL=os.environ.get("OPENAI_BASE_URL"),
        OPENAI_API_KEY=os.environ.get("OPENAI_API_KEY", "sk-none"),
        OPENAI_MODEL=os.environ.get("OPENAI_MODEL", "fake-model"),
    )
    app.config.update(test_config or {})
    validator = RequestValidator(app.config["TWILIO_AUTH_TOKEN"])
    model_client: dict[str, Any] = {}
    model_lock = threading.Lock()

    def signature_ok() -> bool:
        """True when the request carries Twilio's signature for PUBLIC_BASE_URL + path."""
        signature = request.headers.get("X-Twilio-Signature", "")
        url = app.config["PUBLIC_BASE_URL"] + request.path
        return bool(signature) and validator.validate(url, request.form, signature)

    def forbidden() -> Response:
        """What an unsigned request gets."""
        return Response("Forbidden\n", status=403, mimetype="text/plain")

    @app.post("/twilio/sms")
    def sms() -> Response:
        """Validate the signature and acknowledge: nothing else."""
        if not signature_ok():
            return forbidden()
        return Response(EMPTY_TWIML, mimetype="text/xml")

    @app.post("/tutorial/sms")
    def tutorial_sms() -> Response:
        """Call the model while Twilio waits, then answer with the reply as TwiML."""
        if not signature_ok():
            return forbidden()
        with model_lock:
            if "client" not in model_client:
                from openai import OpenAI

                model_client["client"] = OpenAI(
                    base_url=app.config["OPENAI_BASE_URL"],
                    api_key=app.config["OPENAI_API_KEY"],
                    max_retries=0,
                )
        completion = model_client["client"].chat.completions.create(
            model=app.config["OPENAI_MODEL"],
            messages=[
                {"role": "system", "content": "You answer text messages briefly."},
                {"role": "user", "content": request.form.get("Body", "")},
            ],
        )
        text = completion.choices[0].message.content or ""
        twiml = (
            f'<?xml version="1.0" encoding="UTF-8"?><Response><Message>{escape(text)}</Message></Response>'
        )
        return Response(twiml, mimetype="text/xml")

    @app.get("/healthz")
    def healthz() -> Response:
        """The process is up."""
        return Response("ok\n", mimetype="text/plain")

    return app
