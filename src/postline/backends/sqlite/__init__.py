"""Postline backends/sqlite package."""
