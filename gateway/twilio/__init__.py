"""The Twilio edge: webhook signatures, the inbound SMS/MMS and status webhooks, Twilio's
keyword lists and status names, the REST client that sends, MMS media fetched from Twilio,
and number setup.

client, signature, keywords, statuses' mapping and media import only gateway.config,
gateway.errors and gateway.storage; webhooks.py (the blueprint) and statuses' recording call
into gateway.conversations.
"""
