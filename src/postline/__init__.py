"""Postline: a self-hosted, SendGrid-compatible email delivery platform."""

__version__ = "0.1.0"
