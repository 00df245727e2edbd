"""zerotune serving package."""
