"""The training checkpoint an export or a verification starts from, read with a clear error
for a file that is missing, corrupt, from another program or from an older edgecnn."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from torch import nn

from edgecnn.training.checkpoint import load_checkpoint

# What export and verify read from a checkpoint's meta dict (see training.checkpoint).
REQUIRED_META = ("model", "input_shape", "dataset", "classes", "mean", "std", "params")


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (ONNX and torch errors run to pages)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class CheckpointError(ValueError):
    """The checkpoint cannot be used: missing, unreadable, or not a current edgecnn checkpoint."""


def load_source(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """load_checkpoint, with every way a foreign or stale file fails turned into CheckpointError."""
    try:
        model, meta = load_checkpoint(path)
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from exc
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        # torch.load on a non-zip file, a foreign pickle, a missing key, or a state_dict that no
        # longer fits the architecture (a checkpoint from an older edgecnn)
        raise CheckpointError(
            f"{path}: not a usable edgecnn checkpoint ({type(exc).__name__}: {first_line(exc)}); re-train or re-save it "
            "with this edgecnn version"
        ) from exc
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise CheckpointError(f"{path}: edgecnn checkpoint lacks {', '.join(missing)} (written by an older edgecnn?)")
    return model, meta
