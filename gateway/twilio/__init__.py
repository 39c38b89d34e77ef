"""The Twilio edge: webhook signatures, the inbound SMS/MMS/WhatsApp and status webhooks, Twilio's
keyword lists and status names, channels (SMS, WhatsApp), the REST client that sends, how a number
sends (Messaging Service, send rate), MMS media fetched from Twilio, and number setup.

client, signature, keywords, channels, statuses' mapping and media import only gateway.config,
gateway.errors and gateway.storage (senders also gateway.queue, for the shared send-rate key);
webhooks.py (the blueprint) and statuses' recording call
into gateway.conversations.
"""
