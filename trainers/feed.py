"""The console feed: how zerotune's own lines and progress figures get from the workers to the
driver's console, whatever Ray does with the workers' stdout and stderr.

A Ray Train callback on the driver sees a worker's figures only once per evaluation round; a
progress bar wants them every few steps. So the driver starts one small actor (no CPU), names it
in the workers' environment (ZEROTUNE_CONSOLE, see `trainers.console`), and a driver thread
drains it a few times a second into `console.dispatch`. Rank 0 posts a step every
`schedule.log_every_steps` steps, so the traffic is a few small messages a second at most.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from . import console

NAMESPACE = "zerotune"
POLL_S = 0.25
_MAX_QUEUED = 10_000  # a driver that stopped draining must not grow the actor without bound


class _Mailbox:
    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self.dropped = 0

    def post(self, event: dict[str, Any]) -> None:
        if len(self._events) >= _MAX_QUEUED:
            self.dropped += 1
            return
        self._events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events


def new_name() -> str:
    """A name for this command's feed, chosen before Ray starts (it goes into the runtime env)."""
    return f"zerotune-console-{uuid.uuid4().hex[:12]}"


class Feed:
    """The driver's end: the actor and the thread that drains it."""

    def __init__(self, name: str):
        import ray

        self.name = name
        self._actor = ray.remote(num_cpus=0, max_restarts=0)(_Mailbox).options(
            name=name, namespace=NAMESPACE, lifetime=None).remote()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="zerotune-console-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self.flush()

    def flush(self) -> None:
        """Show everything posted so far (call before printing a summary)."""
        import ray

        with self._lock:
            try:
                events = ray.get(self._actor.drain.remote(), timeout=30)
            except Exception:  # Ray is shutting down under us
                return
            console.dispatch(events)

    def close(self) -> None:
        import ray

        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
        try:
            ray.kill(self._actor)
        except Exception:
            pass


_feed: Feed | None = None


def start(name: str) -> Feed:
    """Start this process's feed under `name` (once; later calls return it)."""
    global _feed
    if _feed is None:
        _feed = Feed(name)
    return _feed


def flush() -> None:
    if _feed is not None:
        _feed.flush()


def stop() -> None:
    global _feed
    if _feed is not None:
        _feed.close()
        _feed = None
