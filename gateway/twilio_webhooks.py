"""Twilio-facing webhooks: inbound SMS/MMS and message status callbacks."""

from flask import Blueprint

bp = Blueprint("twilio", __name__, url_prefix="/twilio")
