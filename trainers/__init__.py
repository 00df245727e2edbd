"""zerotune trainers package."""
