"""Errors the CLI shows as one message (exit 2). The base class lives in trainers/errors.py so
every package can raise user errors without importing cluster/."""

from __future__ import annotations

from trainers.errors import CheckpointError, DataError, ModelNotFoundError, UserError

__all__ = ["CheckpointError", "ConfigError", "ConnectError", "DataError", "ModelNotFoundError", "UserError"]


class ConfigError(UserError):
    """A spec that does not validate. Holds every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        n = len(problems)
        head = f"{source}: {n} problem{'s' if n != 1 else ''} in the spec:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in problems)]))


class ConnectError(UserError):
    """No Ray cluster answers at the address the spec or RAY_ADDRESS names."""
