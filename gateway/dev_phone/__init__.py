"""The dev phone at /dev/phone and the built-in Twilio emulator behind it (`smsgw dev` only).

emulator.py speaks Twilio's REST API on a loopback port, so replies leave through the real twilio
client and come back as signed status callbacks; views.py is a phone-like page whose texts reach
POST /twilio/sms through the emulator, signed as Twilio signs them. Nothing here runs in
production: the app registers this blueprint only when `smsgw dev` hands it an emulator.
"""
