"""The training device a recipe names: which strings are accepted, and the torch device.

A recipe's ``run.device`` is one of ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``,
``"cuda"`` or ``"cuda:N"``. Everything else that ``torch.device`` would parse ("meta", "mps",
"xpu", ...) is refused when the recipe is read: kdcore is tested on the CPU and CUDA only, and
a "meta" run would build tensors without storage and fail at its first step.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from kdcore.errors import RecipeError, byte_size
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


# What a run may plan to hold of the memory left on its device: a model's parameters, the
# ledger's per-class columns, the transition matrix; more is refused before it is allocated
# (the models' whole training state has its own share: kdcore.footprint).
MEMORY_SHARE = 0.5


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` (the GPU's, or the host's available pages); None: unknown."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:  # Linux: what can be had without swapping, the page cache included
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # free pages only: a lower bound
        pages = os.sysconf("SC_AVPHYS_PAGES")
        return int(pages * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(what: str, size: int, device: torch.device, fix: str,
               key: str | None = None) -> None:
    """Refuse ``size`` bytes for ``what`` beyond :data:`MEMORY_SHARE` of the free memory (a
    :class:`~kdcore.errors.RecipeError` at ``key``, the recipe value to change)."""
    free = free_memory(device)
    if free is not None and size > MEMORY_SHARE * free:
        raise RecipeError(f"{what} needs {byte_size(size)}; {byte_size(free)} are free on "
                          f"{device} ({fix})", key=key)


__all__ = ["ACCEPTED", "MEMORY_SHARE", "check_fits", "device_name", "free_memory",
           "resolve_device"]
