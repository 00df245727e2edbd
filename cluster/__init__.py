"""zerotune cluster package."""
