"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so ``torch.load`` never
unpickles code; a user may resume runs and load teachers received from others safely.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.errors import KdcoreError

CHECKPOINT = "checkpoint.pt"


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` through a temporary file, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KdcoreError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # unpickling errors of a damaged or foreign file
        raise KdcoreError(f"cannot read checkpoint {path}: {exc}") from None


def save_weights(model: nn.Module, path: Path) -> None:
    """A model's ``state_dict``, loadable as a recipe's ``models.<role>.checkpoint``."""
    save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_weights(path: str | Path, role: str) -> dict[str, torch.Tensor]:
    """Weights for ``role`` from a kdcore weights file, a kdcore checkpoint or a state dict."""
    path = Path(path)
    if not path.is_file():
        raise KdcoreError(f"checkpoint for model '{role}' not found: {path}")
    state = load(path)
    if "models" in state and isinstance(state["models"], dict):  # a full run checkpoint
        if role not in state["models"]:
            raise KdcoreError(f"{path} holds no model '{role}'; it has "
                              f"{', '.join(state['models'])}")
        state = state["models"][role]
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """Every random state the run draws from: torch (CPU and CUDA), Python, its generators."""
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(_flatten_python_state(random.getstate())),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any], *generators: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for g, s in zip(generators, state["generators"], strict=True):
        g.set_state(s)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten_python_state(state: tuple[Any, ...]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return version, list(internal), gauss
