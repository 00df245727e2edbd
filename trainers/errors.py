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


_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")


def looks_secret(name: str) -> bool:
    """Whether a variable or key name suggests its value is a secret (WANDB_API_KEY, HF_TOKEN)."""
    upper = str(name).upper()
    return any(word in upper for word in _SECRET_WORDS)


def preview(value: object, room: int = 80, hide: bool = False) -> str:
    """A short repr for messages that never walks or reprs more than `room` characters' worth of
    `value` (a loaded value can be a megabyte string or a huge list), and that hides what sits
    under a secret-looking key. `hide`: hide this value itself."""
    if hide:
        return "<hidden>"
    if isinstance(value, str):
        text = repr(value[:room])  # slice first: the work is bounded, not just the output
        return text if len(value) <= room else text[:-1] + "...'"
    if isinstance(value, (bool, int, float)) or value is None:
        text = repr(value)
        return text if len(text) <= room else text[: room - 3] + "..."
    if isinstance(value, dict):
        items = [f"{preview(k, room // 4)}: {preview(v, room // 4, looks_secret(str(k)))}"
                 for k, v in _first(value.items(), room)]
        return _bracket("{", items, len(value), "}", room)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [preview(v, room // 4) for v in _first(value, room)]
        return _bracket("[", items, len(value), "]", room)
    return f"<{type(value).__name__}>"


def _first(items, room: int) -> list:
    import itertools

    return list(itertools.islice(items, 4)) if room >= 16 else []


def _bracket(left: str, items: list[str], total: int, right: str, room: int) -> str:
    more = f", ... ({total} items)" if total > len(items) else ""
    if not items and total:
        more = f"... ({total} items)"
    return left + ", ".join(items) + more + right


def diverged_message(loss: object, step: object, lr: float | None) -> str:
    """What a diverged run tells the user (fit()'s error, and the sweep's line for a trial)."""
    now = f" (now {lr:g})" if lr is not None else ""
    return (f"training diverged: the loss was {loss} at step {step}. Lower train.optim.lr{now}, add warmup "
            "(train.schedule.warmup_ratio) or gradient clipping (train.optim.grad_clip).")
