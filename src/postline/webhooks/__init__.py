"""Webhooks: see component.py."""
