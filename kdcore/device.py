"""The training device a recipe names: which strings are accepted, and the torch device.

A recipe's ``run.device`` is one of ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``,
``"cuda"`` or ``"cuda:N"``. Everything else that ``torch.device`` would parse ("meta", "mps",
"xpu", ...) is refused when the recipe is read: kdcore is tested on the CPU and CUDA only, and
a "meta" run would build tensors without storage and fail at its first step.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kdcore.errors import RecipeError
from kdcore.validators import Param

if TYPE_CHECKING:
    import torch

ACCEPTED = "'auto', 'cpu', 'cuda' or 'cuda:N' (N: a GPU index)"
_NAME = re.compile(r"auto|cpu|cuda(:[0-9]{1,4})?")


def device_name(instance: Any, attribute: Any, value: str) -> None:
    """attrs validator of a device string (see the module docstring)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"'{attribute.name}' must be {ACCEPTED}, got {value!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` as named.

    Raises:
        RecipeError: ``name`` is not an accepted device string, CUDA is asked for and no GPU
            is present, or GPU ``N`` does not exist; one line, key ``run.device``.
    """
    import torch

    try:
        device_name(None, Param("device"), name)
    except ValueError as exc:
        raise RecipeError(str(exc), key="run.device") from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError(f"'{name}' was asked for but no CUDA GPU is available here; use "
                              "'auto' or 'cpu'", key="run.device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RecipeError(f"'{name}' was asked for but this machine has {count} GPU(s): "
                              f"cuda:0 to cuda:{count - 1}", key="run.device")
    return device


__all__ = ["ACCEPTED", "device_name", "resolve_device"]
