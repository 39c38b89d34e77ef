"""Conversations: which agent answers, where a number pair becomes a chat, answering a chat,
sending reply parts, outbound starts, and the chat's lifecycle (ending, opting out and in, what
the agent's built-in tools end_chat and handoff_to_human do).

May import gateway.agent, gateway.storage, gateway.queue and the Twilio REST client
(gateway.twilio.client); never the webhooks or the API, which call into it.
"""
