"""Conversations: which agent answers (agents), where a number pair becomes a chat (sessions),
answering a chat (answering: prompt, budget, model, stored answer; replies for SMS, outbound for
openings), sending stored parts (delivery), spend-guard refusals (refusals), a human operator
(operator), how a chat ends (lifecycle), what the agent's built-in tools end_chat and
handoff_to_human do (tool_actions), a person's consent: opting out and in (consent), and what is
kept about a person (contacts, retention).

May import gateway.agent, gateway.storage, gateway.queue and the Twilio REST client
(gateway.twilio.client); never the webhooks or the API, which call into it.
"""
