"""What a command prints, and where everything else goes.

By default the console carries only zerotune's own lines (trainers.console), its live views, user
errors and real failures. Everything the libraries print or log -- Ray, Ray Train and Tune,
Serve, DeepSpeed, transformers, Python warnings, and every worker's stdout and stderr, which Ray
forwards to this driver -- goes to one log file under the run directory, named in the first line
the command prints. `-v/--verbose` leaves the libraries' output on the terminal as they make it.

How, with the libraries' own knobs:

- the driver's `sys.stdout` / `sys.stderr` become the log file for the command's lifetime (what
  Ray prints for its workers and raylets, Tune's own reporter, any library's print()), and the
  console keeps the real terminal; logging handlers that were bound to the terminal before are
  pointed at the file (`StreamHandler.setStream`), Python warnings go through logging
  (`logging.captureWarnings`), and Ray logs at INFO into it;
- Ray's log deduplication is off and its colour prefixes plain (RAY_DEDUP_LOGS=0,
  RAY_COLOR_PREFIX=0): the file keeps every worker line as written;
- every process Ray starts gets ZEROTUNE_CONSOLE (the console feed that carries zerotune's own
  worker lines and progress figures to this driver) and ZEROTUNE_VERBOSE, which the training
  loop reads to set transformers' and DeepSpeed's log levels (trainers/loop.py);
- Tune runs with verbose=0 and Ray Train's preemption watcher stays off on an embedded Ray
  (cluster/connect.py, tuning/sweep.py).

An exception still reaches the terminal with its traceback: the streams are restored first.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from trainers import console, feed

from . import connect
from .spec import ExperimentSpec

LOG_DIR = "logs"
# Read when Ray is imported (dedup) or prints (colour): set before this command imports Ray.
_QUIET_RAY_ENV = {"RAY_DEDUP_LOGS": "0", "RAY_COLOR_PREFIX": "0"}


@dataclass(frozen=True)
class Session:
    log_path: Path
    verbose: bool
    spec_file: str | None = None  # the command line's spec and overrides (for the commands it prints)
    overrides: tuple[str, ...] = ()


_current: Session | None = None


def current() -> Session | None:
    """The running command's session (None outside the CLI)."""
    return _current


def log_path_for(spec: ExperimentSpec, command: str) -> Path:
    """<storage>/<name>/logs/<command>-<time>.log; for cloud storage, a local file of the same name
    under the temp dir (a log is appended line by line; object stores cannot append)."""
    from trainers.storage import Location

    root = Location.parse(spec.cluster.storage_path)
    base = Path(root.path) / spec.name if root.is_local else Path(tempfile.gettempdir()) / "zerotune" / spec.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return base / LOG_DIR / f"{command}-{stamp}-{os.getpid()}.log"


@contextmanager
def session(spec: ExperimentSpec, command: str, *, verbose: bool, spec_file: str | None = None,
            overrides: list[str] | tuple[str, ...] = ()) -> Iterator[Session]:
    """The console for one command: the log file, the quiet default or -v, the worker feed."""
    global _current
    path = log_path_for(spec, command)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 (kept open to exit)
    log.write(f"# zerotune {' '.join(sys.argv[1:]) or command} (pid {os.getpid()}, "
              f"{'verbose' if verbose else 'quiet'} console)\n")
    out, err = sys.stdout, sys.stderr
    console.attach(terminal=out, errors=err, log=log)
    console.set_verbose(verbose)
    connect.set_console_env({console.FEED_ENV: feed.new_name(), console.VERBOSE_ENV: "1" if verbose else "0"})
    if verbose:
        console.say(f"log: {path} (zerotune's lines; the libraries' output stays on this terminal)")
    else:
        console.say(f"log: {path} (Ray, DeepSpeed and transformers output; -v shows it here)")
        for key, value in _QUIET_RAY_ENV.items():
            os.environ.setdefault(key, value)
        _route_to(log, out, err)
        if command in ("train", "run"):  # a sweep puts its own view up while it runs
            from trainers.progress import TrainProgress

            console.set_view(TrainProgress(out))
    _current = Session(log_path=path, verbose=verbose, spec_file=spec_file, overrides=tuple(overrides))
    try:
        yield _current
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            log.write("".join(traceback.format_exception(exc)))
        raise
    finally:
        feed.flush()
        view = console.set_view(None)  # a sweep that raised leaves its live view up
        if view is not None and hasattr(view, "close"):
            view.close()
        sys.stdout, sys.stderr = out, err  # a traceback from here on reaches the terminal
        console.detach()
        log.flush()
        _current = None


def _route_to(log: TextIO, out: TextIO, err: TextIO) -> None:
    sys.stdout = sys.stderr = log
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not any(getattr(h, "stream", None) is log for h in root.handlers):
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    loggers = [root, *(x for x in logging.root.manager.loggerDict.values() if isinstance(x, logging.Logger))]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (out, err):
                h.setStream(log)
