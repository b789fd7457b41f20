"""Stats: see component.py."""
