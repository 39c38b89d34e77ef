"""GET /v1/openapi.json: the OpenAPI 3.1 document of the gateway's public HTTP surface."""

from __future__ import annotations

from flask import jsonify

from . import bp

DOCUMENT: dict = {"openapi": "3.1.0", "info": {"title": "SMS gateway", "version": "0.1.0"}, "paths": {}}


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI document (no key needed)."""
    return jsonify(DOCUMENT)
