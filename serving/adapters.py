"""Many LoRA adapters on one base: which adapters may share a replica, and which one a request names.

Light on purpose (no torch): `build_app` checks adapters on the driver with it, before any
replica starts, so an adapter of another base model, task or label set is refused with the
reason instead of failing replicas over and over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainers.checkpoint import read_manifest
from trainers.errors import CheckpointError
from trainers.storage import Location

from .config import AdapterSpec


def _base_of(manifest) -> str:
    """What an adapter checkpoint was trained on, comparable across checkpoints."""
    from trainers.model import resolve_model_path

    try:
        return str(Path(resolve_model_path(manifest.base_model)).resolve())
    except Exception:  # a hub id, or gone: compare the names
        return manifest.base_model


def check_adapters(checkpoint: str | Path, adapters: Sequence[AdapterSpec]) -> None:
    """Raise CheckpointError listing every adapter that cannot share the checkpoint's base."""
    if not adapters:
        return
    main_path = Location.parse(checkpoint)
    main = read_manifest(main_path)
    problems = []
    if main.kind != "adapter":
        problems.append(f"the app's checkpoint {main_path} is a {main.kind} model; serve.adapters needs it to be a "
                        "LoRA adapter checkpoint too (train with lora.enabled and lora.merge_on_save false)")
    base = _base_of(main)
    for spec in adapters:
        path = Location.parse(spec.checkpoint)
        try:
            m = read_manifest(path)
        except CheckpointError as err:
            problems.append(f"adapter {spec.name!r}: {err}")
            continue
        if m.kind != "adapter":
            problems.append(f"adapter {spec.name!r}: {path} is a {m.kind} model, not a LoRA adapter")
        if m.task != main.task:
            problems.append(f"adapter {spec.name!r} is a {m.task} adapter; the app serves {main.task}")
        if _base_of(m) != base:
            problems.append(f"adapter {spec.name!r} was trained on base {m.base_model!r}; the app's base is "
                            f"{main.base_model!r} (one base model per replica)")
        if m.labels != main.labels:
            problems.append(f"adapter {spec.name!r} has labels {m.labels}; the app's checkpoint has {main.labels}")
    if problems:
        raise CheckpointError("serve.adapters cannot be served together: " + "; ".join(problems))


class UnknownModel(Exception):
    """A request named a model this app does not serve."""


@dataclass(frozen=True)
class ModelIds:
    """The ids an app answers to: its own (app_name, the checkpoint) and one per adapter."""

    app_id: str
    base_model: str
    adapters: tuple[str, ...] = ()

    @property
    def all(self) -> list[str]:
        return [self.app_id, *self.adapters]

    def adapter_for(self, requested: str | None) -> str | None:
        """The adapter a `model` field names (None: the app's own checkpoint). Accepts '<name>' and
        '<app id or base model>:<name>'; raises UnknownModel naming what is served."""
        if requested is None or requested == "" or requested == self.app_id:
            return None
        name = requested
        prefix, sep, tail = requested.rpartition(":")
        if sep and prefix in (self.app_id, self.base_model):
            name = tail
        if name == self.app_id:
            return None
        if name in self.adapters:
            return name
        raise UnknownModel(f"model {requested!r} is not served here; this endpoint serves "
                           f"{', '.join(repr(m) for m in self.all)}")

    def served_id(self, adapter: str | None) -> str:
        return self.app_id if adapter is None else adapter
