"""Storage: the database connection (db.py), the schema (models.py) and its migrations.

Imports only gateway.config; every other part of the gateway imports from here.
"""
