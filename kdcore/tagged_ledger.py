"""The ledger as one component or plugin sees it (:class:`TaggedLedger`): reads as usual,
writes tagged with the writer's name and held to what it may write."""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator

import torch

from kdcore.context import ColumnKind
from kdcore.history_names import READ_ONLY_COLUMNS, declared_column_problem
from kdcore.ledger import Ledger

KINDS: tuple[str, ...] = typing.get_args(ColumnKind)


def shared_hook_column(name: str) -> str | None:
    """``select/<name>`` for ``select/<name>/<role>`` (``weight`` alike): a hook that returned
    one tensor wrote it once, for every model it serves, so a reader naming one model's
    column reads that (the plan counts both forms as written; a label propagation reading
    ``select/small_loss/student`` had stopped the run where ``select/small_loss`` was there)."""
    hook, _, rest = name.partition("/")
    component, sep, role = rest.partition("/")
    if hook not in ("select", "weight") or not sep or not component or not role or "/" in role:
        return None
    return f"{hook}/{component}"


class TaggedLedger:
    """The ledger as one component sees it: reads as usual, writes tagged with its name.

    Writes to a column the component did not declare (:meth:`Component.written_columns`) are
    refused, so the plan's wiring check cannot be bypassed by accident. A plugin's observer
    (``allowed`` None) declares nothing: a new column of its is held to what the plan holds a
    declared one to (a name the history can keep, no folder of another column's, not one of
    the data's read-only columns), since the history would fail on it at the epoch's end.
    """

    __slots__ = ("_ledger", "_producer", "_allowed", "_frozen_in")

    def __init__(self, ledger: Ledger, producer: str, allowed: frozenset[str] | None):
        self._ledger = ledger
        self._producer = producer
        self._allowed = allowed
        self._frozen_in: str | None = None  # the hook in which writes are refused

    @contextlib.contextmanager
    def frozen(self, hook: str) -> Iterator[None]:
        """Refuse every write while ``hook`` runs (``setup``: it runs again on resume and
        before the first stage trains, so a write there would differ between runs)."""
        self._frozen_in = hook
        try:
            yield
        finally:
            self._frozen_in = None

    @property
    def size(self) -> int:
        return self._ledger.size

    def _held(self, name: str) -> str:
        """``name``, or where the ledger lacks it, the hook's one column it reads as
        (:func:`shared_hook_column`) if the ledger holds that."""
        if name not in self._ledger:
            shared = shared_hook_column(name)
            if shared is not None and shared in self._ledger:
                return shared
        return name

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._ledger[self._held(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._held(name) in self._ledger

    def __iter__(self) -> Iterator[str]:
        return iter(self._ledger)

    def read(self, name: str, index: torch.Tensor | None = None) -> torch.Tensor:
        return self._ledger.read(self._held(name), index)

    def producer(self, name: str) -> str:
        return self._ledger.producer(self._held(name))

    def kind(self, name: str) -> ColumnKind:
        return self._ledger.column(self._held(name)).kind

    def _check(self, name: str, kind: str, *tensors: object) -> None:
        if kind not in KINDS:  # else the history's write at the epoch's end names no one
            raise ValueError(f"ledger column '{name}': kind {kind!r} is none of "
                             f"{', '.join(KINDS)}")
        for given in tensors:
            if not isinstance(given, torch.Tensor):
                raise TypeError(f"ledger column '{name}' takes torch tensors, not "
                                f"{type(given).__name__} (torch.as_tensor makes one)")
        if self._frozen_in is not None:
            raise RuntimeError(
                f"component '{self._producer}' wrote ledger column '{name}' in "
                f"{self._frozen_in}, which must not write the ledger (it runs again on resume "
                f"and before the run's first stage); write it in on_stage_start")
        if self._allowed is None:  # a plugin's observer: any column the history can keep
            if name in READ_ONLY_COLUMNS or name not in self._ledger:
                problem = declared_column_problem(name, self._ledger)
                if problem:
                    raise RuntimeError(f"plugin '{self._producer}' wrote ledger column "
                                       f"{name!r}, which the history cannot keep: {problem}")
        elif name not in self._allowed:
            raise RuntimeError(
                f"component '{self._producer}' wrote ledger column '{name}', which it does not "
                f"declare (declared: {', '.join(sorted(self._allowed)) or 'none'}); add it to "
                f"the class's `writes`")

    def add(self, name: str, data: torch.Tensor, *, kind: ColumnKind = "value",
            snapshot: bool = True) -> torch.Tensor:
        self._check(name, kind, data)
        return self._ledger.add(name, data, producer=self._producer, kind=kind, snapshot=snapshot)

    def write(self, name: str, index: torch.Tensor, values: torch.Tensor, *,
              kind: ColumnKind = "value", snapshot: bool = True) -> None:
        self._check(name, kind, index, values)
        self._ledger.write(name, index, values, producer=self._producer, kind=kind,
                           snapshot=snapshot)

    def ensure(self, name: str, like: torch.Tensor, *, kind: ColumnKind = "value",
               fill: float | bool = 0, snapshot: bool = True) -> torch.Tensor:
        self._check(name, kind, like)
        return self._ledger.ensure(name, like, producer=self._producer, kind=kind, fill=fill,
                                   snapshot=snapshot)
