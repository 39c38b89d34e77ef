"""The agent: reading a chat's history, building the prompt, calling the model (and the agent's
tools), turning its text into SMS, and the memory (summary, profile) and post-chat analysis kept
by the model.

May import gateway.config, gateway.errors, gateway.metrics, gateway.safe_http (tool calls),
gateway.queue, gateway.events, gateway.storage and gateway.twilio.media (MMS images for the
prompt); never conversations, the Twilio webhooks or the API.
"""
