"""An agent's chat event webhook: the newest delivery attempts to its endpoint."""

from __future__ import annotations

from flask import current_app

from gateway import events
from gateway.api.agents import AGENT_ID, get_agent_or_404
from gateway.api.contract import operation
from gateway.api.schemas import WebhookAttempt, WebhookDeliveries


@operation(
    "GET",
    "/agents/<agent_id>/webhook-deliveries",
    operation_id="listWebhookDeliveries",
    tag="agents",
    summary="The newest chat event deliveries to the agent's webhook",
    ok=(200, WebhookDeliveries, "The endpoint and its newest delivery attempts (at most 50), newest first."),
    path_params=AGENT_ID,
)
def list_webhook_deliveries(agent_id: str) -> WebhookDeliveries:
    """The agent's webhook URL and the newest attempts to deliver to it."""
    settings = current_app.config["SETTINGS"]
    url, _ = events.endpoint_for(get_agent_or_404(agent_id), settings)
    if url is None:
        return WebhookDeliveries(url=None, attempts=[])
    redis = current_app.redis  # type: ignore[attr-defined]
    attempts = events.recent_attempts(redis, settings, url)
    return WebhookDeliveries(url=url, attempts=[WebhookAttempt.model_validate(a) for a in attempts])
