"""Postline smtp package."""
