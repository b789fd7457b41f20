"""Activity: see component.py."""
