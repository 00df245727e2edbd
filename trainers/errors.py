"""User errors: mistakes in a spec, the data or a request that the user can fix.

The CLI prints a `UserError` as one message without a traceback and exits 2; anything else is
a bug and keeps its traceback. This lives in trainers/ (the lowest layer) so that every
package can raise it without importing cluster/.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what and how."""


class DataError(UserError):
    """Bad or missing training data (file, column, row, label)."""


class ModelNotFoundError(UserError):
    """A model or checkpoint that does not exist where the spec says."""


class CheckpointError(UserError):
    """A directory that is not a zerotune checkpoint."""


def did_you_mean(word: str, options: list[str] | tuple[str, ...] | set[str]) -> str:
    """' Did you mean 'x'?' for the closest option, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), sorted(options), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
