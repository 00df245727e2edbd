"""Resume without running code from storage: checkpoint state read with `torch.load(weights_only=True)`.

DeepSpeed 0.19's TorchCheckpointEngine reads every rank's state with `weights_only=False`, so
anyone who can write to a run's storage could make every worker execute code on resume or retry.
`install(engine)` swaps in `SafeCheckpointEngine`, which refuses every global but tensors,
containers and the few DeepSpeed types its own state holds (found by saving ZeRO-0/1/2/3 state
with DeepSpeed's own engine and listing `torch.serialization.get_unsafe_globals_in_checkpoint`).
Engine ddp's state (trainers/ddp.py) and the loop's RNG states are plain tensors and containers:
`safe_torch_load(path, allow=())` reads them without importing DeepSpeed.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import UserError


class UnsafeCheckpointError(UserError):
    """A checkpoint file holds something that loading would have to execute."""


def deepspeed_state_globals() -> list:
    """The non-tensor types DeepSpeed writes into its checkpoint state (the loss scaler, the ZeRO
    stage enum, ZeRO-2's fragment addresses): data classes and an enum, none of which runs code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path: str | Path, map_location=None, allow: Sequence | None = None):
    """torch.load with weights_only=True and the types in `allow` (default: DeepSpeed's state types)
    allowed; UnsafeCheckpointError (naming the file and what it tried to load) for anything else."""
    with torch.serialization.safe_globals(list(deepspeed_state_globals() if allow is None else allow)):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's message names the refused global (e.g. "Unsupported global: GLOBAL posix.system");
            # its advice to pass weights_only=False is exactly what must not be done here.
            found = re.search(r"Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+|[^.\n]*global[^.\n]*",
                              str(err))
            detail = found.group(0).strip() if found else type(err).__name__
            raise UnsafeCheckpointError(
                f"refusing to resume from {path}: it holds a pickled object that loading would execute "
                f"({detail}). zerotune only loads tensors and DeepSpeed's own state types from a checkpoint's "
                "state/; this file was not written by zerotune's training (or was altered in storage). "
                "Remove that checkpoint (or the run directory) to start over, and check who can write to "
                "the run's storage."
            ) from None


def _engine_class():
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch.save/torch.load engine, loading with weights_only=True."""

        zerotune_safe = True

        def load(self, path: str, map_location=None):
            return safe_torch_load(path, map_location=map_location)

    return SafeCheckpointEngine


def install(engine) -> None:
    """Make `engine` (a DeepSpeedEngine) read checkpoints with weights_only=True. DeepSpeed picks its
    checkpoint engine from the config in `_configure_checkpointing`; zerotune's config never asks
    for another one, so the engine there is always the plain TorchCheckpointEngine we replace."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    current = engine.checkpoint_engine
    if getattr(current, "zerotune_safe", False):
        return
    if type(current) is not TorchCheckpointEngine:
        raise RuntimeError(f"expected DeepSpeed's TorchCheckpointEngine, got {type(current).__name__}; "
                           "its loads are not known to be safe")
    engine.checkpoint_engine = _engine_class()(engine._config)  # same serialization settings as before


def load_deepspeed_state(engine, state_dir: str | Path, tag: str) -> None:
    """Resume `engine` from a checkpoint's state/ directory, executing nothing stored there."""
    install(engine)
    engine.load_checkpoint(str(state_dir), tag=tag)
