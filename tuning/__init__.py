"""zerotune tuning package."""
