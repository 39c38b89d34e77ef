"""The operator console at /console: server-rendered pages to watch and steer chats, agents and numbers.

Every page and action needs a signed-in session (gateway/console/auth.py); every form carries a
CSRF token. The pages are Jinja templates under templates/console/ with a little vanilla
JavaScript from static/ (no build step, nothing fetched from elsewhere). The console sits on top
of the other layers: it may import the API's helpers, the conversations and the Twilio edge;
nothing imports it but the app factory.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

from gateway.console import agents, auth, chats, contacts, manage  # noqa: E402,F401  (routes register on bp)
