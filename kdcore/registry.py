"""Named registries of datasets, noise models, architectures and components.

Plugins fill them through the ``kdcore_add_*`` hooks (see :mod:`kdcore.hookspecs`); every entry
remembers the plugin that provided it, so that ``kdcore plugins`` and error messages can name it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from kdcore.errors import KdcoreError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects of one kind, with the plugin that provided each.

    Args:
        kind: what the entries are ("dataset", "component", ...), used in messages.
        hints: names users bring from other codebases, each with what to use here; an unknown
            name among them gets its hint rather than the closest spelling ("asymmetric" is
            one letter from "symmetric", and means something else).
    """

    def __init__(self, kind: str, hints: Mapping[str, str] | None = None):
        self.kind = kind
        self.hints = dict(hints or {})
        self._items: dict[str, T] = {}
        self._providers: dict[str, str] = {}

    def register(self, name: str, obj: T, provider: str = "?") -> None:
        """Add ``obj`` under ``name``; a name that two plugins claim is an error."""
        if name in self._items:
            raise KdcoreError(
                f"{self.kind} '{name}' is provided by both '{self._providers[name]}' and "
                f"'{provider}'; uninstall one of them"
            )
        self._items[name] = obj
        self._providers[name] = provider

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name raises with a "did you mean"."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            hint = (f" (use {self.hints[name]})" if name in self.hints
                    else did_you_mean(name, self._items))
            raise KdcoreError(f"unknown {self.kind} '{name}'{hint}; known: {known}") from None

    def provider(self, name: str) -> str:
        """The plugin that registered ``name``."""
        return self._providers[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
