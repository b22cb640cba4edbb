"""The directories a recipe names: their parameter type, and the check shared by the loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from kdcore.errors import KdcoreError
from kdcore.validators import no_nul, require


def not_blank(instance: Any, attribute: Any, value: Any) -> None:
    """A path that is not empty: ``Path("")`` is the working directory, so an empty root would
    quietly read whatever the run was started in."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"'{attribute.name}' is empty; it must name a directory")


Directory = Annotated[str, no_nul, not_blank]
"""A directory path as a recipe gives it (``~`` is expanded)."""


def given_dir(value: str | None, name: str, *, loader: str, holds: str) -> Path:
    """The directory ``value``, refusing ``None`` and what :data:`Directory` refuses.

    Args:
        value: the path as the recipe gives it.
        name: the parameter's name (``"root"``).
        loader: the loader's name, for the message.
        holds: what the directory should hold, for the message.
    """
    if value is None:
        raise KdcoreError(f"{loader}: '{name}' is missing; it must name {holds}")
    require(value, name, Directory, where=loader)
    return Path(value).expanduser()
