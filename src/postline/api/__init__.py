"""Postline api package."""
