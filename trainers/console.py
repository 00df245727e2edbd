"""The one console printer: zerotune's own lines, `[zerotune] ...`, blocks such as tables, and
progress events from the workers.

Where a line goes depends on the process:

- the driver (the `zerotune` command): to the terminal and, once `attach` has named one, to the
  run's log file; while a live view is on screen, the view prints it above itself;
- a Ray worker or Tune trial started by the command: to the driver, through the console feed
  (`trainers.feed`, a small Ray actor named in ZEROTUNE_CONSOLE), so the driver shows it whatever
  Ray does with the worker's own output (in the quiet default that goes to the log file only);
- any other process (a worker without a feed): its own stdout, straight and flushed (Ray Train v2
  patches print() in workers to both echo and log, which doubles every printed line).

`progress(kind, ...)` sends structured figures (a training step, an evaluation round) the same way;
on the driver a live view turns them into a progress bar or table, and without one they are said
as plain lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Protocol, TextIO

PREFIX = "[zerotune]"
FEED_ENV = "ZEROTUNE_CONSOLE"  # set only in the processes Ray starts: the feed actor's name
VERBOSE_ENV = "ZEROTUNE_VERBOSE"  # "1": the user asked for the libraries' output (-v)


class View(Protocol):
    """A live view on the driver (a progress bar, a sweep table)."""

    def print(self, text: str) -> None: ...  # a line above the live region

    def on_progress(self, event: dict[str, Any]) -> None: ...


class _Console:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.terminal: TextIO | None = None  # None: sys.stdout at the time of writing
        self.errors: TextIO | None = None  # None: sys.stderr at the time of writing
        self.log: TextIO | None = None
        self.view: View | None = None
        self.feed: Any = None  # in a worker: the feed actor's handle (False: none reachable)
        self.posted: Any = None  # the last post's ObjectRef (posts from one process arrive in order)
        self.verbose: bool | None = None  # None: as VERBOSE_ENV says


_c = _Console()


# --- where output goes (the driver's composition root sets this up) ------------------------------

def attach(*, terminal: TextIO | None = None, errors: TextIO | None = None, log: TextIO | None = None) -> None:
    """Send zerotune's lines to `terminal` (and errors to `errors`), and copy them into `log`."""
    with _c.lock:
        _c.terminal, _c.errors, _c.log = terminal, errors, log


def detach() -> None:
    with _c.lock:
        _c.terminal = _c.errors = _c.log = _c.view = _c.verbose = None


def set_verbose(on: bool) -> None:
    _c.verbose = on


def verbose() -> bool:
    """Whether the user asked for the libraries' own output (`-v`): then zerotune leaves their
    log levels alone and shows no live view."""
    return _c.verbose if _c.verbose is not None else os.environ.get(VERBOSE_ENV) == "1"


def terminal() -> TextIO:
    return _c.terminal or sys.stdout


def set_view(view: View | None) -> View | None:
    """Make `view` the live view (None: back to plain lines); returns the previous one."""
    with _c.lock:
        before, _c.view = _c.view, view
        return before


def log_line(text: str) -> None:
    """A line for the log file only (nothing on the terminal)."""
    with _c.lock:
        if _c.log is not None:
            _c.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            _c.log.flush()


# --- what zerotune says ---------------------------------------------------------------------------

def say(message: str) -> None:
    """One zerotune line."""
    _emit(f"{PREFIX} {message}")


def show(block: str) -> None:
    """A block a person reads as a whole (a summary, a table), unprefixed."""
    _emit(block.rstrip("\n"))


def error(message: str) -> None:
    """A message for standard error (the CLI's user errors); copied into the log file."""
    with _c.lock:
        log_line(message)
        stream = _c.errors or sys.stderr
        stream.write(message.rstrip("\n") + "\n")
        stream.flush()


def progress(kind: str, **fields: Any) -> None:
    """Structured progress from a worker: kind "step" (step, total_steps, loss, lr, samples_per_s,
    epoch) or "eval" (step, total_steps, metrics). `run` names the run it belongs to."""
    event = {"kind": kind, **fields}
    if _post(event):
        return
    _on_driver(event)


def _emit(text: str) -> None:
    if _post({"kind": "line", "text": text}):
        return
    _write(text)


def _write(text: str) -> None:
    with _c.lock:
        log_line(text)
        if _c.view is not None:
            _c.view.print(text)
            return
        stream = terminal()
        stream.write(text + "\n")
        stream.flush()


def _on_driver(event: dict[str, Any]) -> None:
    """An event that arrived on the driver (from the feed, or raised here)."""
    with _c.lock:
        view = _c.view
    if event.get("kind") == "line":
        text = event["text"]
        label = view.label(event) if view is not None and hasattr(view, "label") else None
        if label and text.startswith(PREFIX):  # whose worker said it, where several train at once
            text = f"{PREFIX} {label}: {text[len(PREFIX):].lstrip()}"
        _write(text)
        return
    if view is not None:
        log_line(f"{PREFIX} {describe(event)}")
        view.on_progress(event)
    else:
        _write(f"{PREFIX} {describe(event)}")


def dispatch(events: list[dict[str, Any]]) -> None:
    """Events drained from the feed, in the order the workers posted them."""
    for event in events:
        _on_driver(event)


def describe(event: dict[str, Any]) -> str:
    """A progress event as the plain line it reads as without a live view."""
    step, total = event.get("step", 0), event.get("total_steps") or 0
    run = f"{event['run']}: " if event.get("run") and event.get("show_run") else ""
    if event.get("kind") == "step":
        eta = event.get("eta_s")
        return (f"{run}step {step}/{total} ({100 * step / max(total, 1):.0f}%) epoch {event.get('epoch', 0)} "
                f"loss {event.get('loss', float('nan')):.4f} lr {event.get('lr', 0.0):.2e} "
                f"{event.get('samples_per_s', 0.0):.1f} samples/s"
                + (f" eta {time.strftime('%H:%M:%S', time.gmtime(eta))}" if eta is not None else ""))
    if event.get("kind") == "eval":
        shown = ", ".join(f"{k} {v:.4f}" for k, v in event.get("metrics", {}).items())
        return f"{run}eval at step {step}/{total}: {shown}"
    return f"{run}{event}"


# --- the worker side: post to the driver's feed ---------------------------------------------------

def _post(event: dict[str, Any]) -> bool:
    """In a process Ray started for a zerotune command: send the event to the driver."""
    name = os.environ.get(FEED_ENV)
    if not name:
        return False
    feed = _feed(name)
    if feed is None:
        return False
    event.setdefault("pid", os.getpid())
    try:
        _c.posted = feed.post.remote(event)
    except Exception:  # the driver is gone (a detached Serve app outliving its command)
        _c.feed = False
        return False
    return True


def flush(timeout_s: float = 10.0) -> None:
    """Wait until this process's posts reached the feed: a process that ends right after its last
    line (a trial that trained in its own process) would otherwise lose it with the process."""
    posted = _c.posted
    if posted is None:
        return
    import ray

    ray.wait([posted], timeout=timeout_s)


def _feed(name: str):
    with _c.lock:
        if _c.feed is None:
            try:
                import ray

                if not ray.is_initialized():
                    return None
                from .feed import NAMESPACE

                _c.feed = ray.get_actor(name, namespace=NAMESPACE)
            except Exception:
                _c.feed = False
        return _c.feed or None
