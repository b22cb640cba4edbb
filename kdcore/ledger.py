"""The per-sample ledger: every column over the N training samples, in one place.

Rows are the stable training-sample index that every batch carries (``batch.index``), never a
loader position, so a column written from a shuffled batch lands on the right samples. Each
column remembers the component that last wrote it; that name is what the history shows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import attrs
import torch

from kdcore.context import ColumnKind
from kdcore.tensor_version import version


@attrs.define(eq=False)
class Column:
    """One ledger column.

    Attributes:
        data: the values, shape ``(N, ...)``.
        producer: the component (or ``"data"``) that wrote it last.
        kind: how the history stores it: ``target`` as float16 ``N x C``, ``mask`` as bool
            (float16 once it holds soft scores), ``weight`` and ``value`` as float16, ``exact``
            as float32 (values float16 cannot hold, such as bounds near 1e-7), ``label`` as
            int32.
        snapshot: whether the history keeps a copy every epoch.
        origin: for a copy :meth:`Ledger.mirror` made: the source's data and version, and
            the copy's version, when it was made.
    """

    data: torch.Tensor
    producer: str
    kind: ColumnKind
    snapshot: bool = True
    origin: tuple[torch.Tensor, int, int] | None = None


def _check_rows(name: str, data: torch.Tensor) -> None:
    """Refuse rows the history cannot keep: it would fail at the epoch's end (h5py's "chunk
    dimensions must be positive") or drop the imaginary parts with a warning from torch."""
    if data.is_complex():
        raise ValueError(f"ledger column '{name}' holds complex numbers ({data.dtype}); the "
                         "history keeps real ones")
    if 0 in data.shape[1:]:
        raise ValueError(f"ledger column '{name}' has empty rows (of shape "
                         f"{tuple(data.shape[1:])}); a row holds at least one value")


class Ledger:
    """Named per-sample columns over the N training samples.

    Args:
        size: N, the number of training samples.
        device: where the columns live (the training device, so batch reads stay on it).
    """

    def __init__(self, size: int, device: torch.device | str = "cpu"):
        self.size = size
        self.device = torch.device(device)
        self._columns: dict[str, Column] = {}

    def add(
        self,
        name: str,
        data: torch.Tensor,
        *,
        producer: str,
        kind: ColumnKind = "value",
        snapshot: bool = True,
    ) -> torch.Tensor:
        """Create (or replace) the column ``name`` with ``data`` of shape ``(N, ...)``."""
        if data.dim() == 0 or data.shape[0] != self.size:
            got = "a single number" if data.dim() == 0 else f"{data.shape[0]}"
            raise ValueError(f"ledger column '{name}' needs {self.size} rows, got {got}")
        _check_rows(name, data)
        column = Column(data.detach().to(self.device).clone(), producer, kind, snapshot)
        self._columns[name] = column
        return column.data

    def ensure(
        self,
        name: str,
        like: torch.Tensor,
        *,
        producer: str,
        kind: ColumnKind = "value",
        fill: float | bool = 0,
        snapshot: bool = True,
    ) -> torch.Tensor:
        """The column ``name``, created full of ``fill`` shaped like one row of ``like``."""
        column = self._columns.get(name)
        if column is None:
            _check_rows(name, like)
            shape = (self.size, *like.shape[1:])
            data = torch.full(shape, fill, dtype=like.dtype, device=self.device)
            self._columns[name] = column = Column(data, producer, kind, snapshot)
        return column.data

    def mirror(self, name: str, source: str, *, kind: ColumnKind) -> None:
        """Make column ``name`` a copy of column ``source``, with its producer; nothing is
        copied when ``name`` is still the copy made last time, and neither has changed since
        (so the column stays the same tensor, and the history copies its last row)."""
        src, dst = self._columns[source], self._columns.get(name)
        origin = None if dst is None else dst.origin
        if (origin is not None and origin[0] is src.data and origin[1] == src.data._version
                and origin[2] == dst.data._version and dst.producer == src.producer
                and dst.kind == kind):
            return
        data = self.add(name, src.data, producer=src.producer, kind=kind)
        self._columns[name].origin = (src.data, src.data._version, data._version)

    def write(self, name: str, index: torch.Tensor, values: torch.Tensor, *, producer: str,
              kind: ColumnKind = "value", snapshot: bool = True) -> None:
        """Write ``values`` into rows ``index`` of ``name``, creating the column if needed."""
        values = values.detach()
        data = self.ensure(name, values, producer=producer, kind=kind, snapshot=snapshot)
        column = self._columns[name]
        if values.is_floating_point() and not data.is_floating_point() and kind != "label":
            # a bool mask first, soft scores later: cast to bool, 0.3 would have become 1
            data = column.data = data.to(values.dtype)
        data[index.to(self.device)] = values.to(device=self.device, dtype=data.dtype)
        column.producer = producer

    def read(self, name: str, index: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``index`` of ``name`` (all rows when ``index`` is None)."""
        data = self[name]
        return data if index is None else data[index.to(self.device)]

    def producer(self, name: str) -> str:
        return self._columns[name].producer

    def column(self, name: str) -> Column:
        return self._columns[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._columns[name].data
        except KeyError:
            known = ", ".join(sorted(self._columns))
            under = [c for c in sorted(self._columns) if c.startswith(f"{name}/")]
            # a hook that returned one value per model wrote select/<name>/<role> only
            why = (f", only the columns under it ({', '.join(under)}: one per model, where a "
                   "hook returned a value per model)" if under else "")
            raise KeyError(f"no ledger column '{name}'{why}; columns: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def items(self) -> Iterator[tuple[str, Column]]:
        return iter(self._columns.items())

    def marks(self, prefixes: tuple[str, ...], names: Collection[str] = ()
              ) -> dict[str, tuple[torch.Tensor, int]]:
        """Each column named in ``names`` or whose name starts with one of ``prefixes``: its
        tensor and that tensor's version now (every write moves it), for :meth:`unwritten`."""
        return {n: (c.data, version(c.data)) for n, c in self._columns.items()
                if n.startswith(prefixes) or n in names}

    def unwritten(self, marks: dict[str, tuple[torch.Tensor, int]]) -> set[str]:
        """The columns of ``marks`` that nothing wrote since: the same tensor, its version
        unmoved (one whose version cannot be read counts as written)."""
        return {n for n, (data, mark) in marks.items() if mark >= 0
                and (c := self._columns.get(n)) is not None and c.data is data
                and version(data) == mark}

    def state_dict(self) -> dict[str, dict[str, object]]:
        """Every column with its metadata, for checkpoints (tensors and strings only)."""
        return {
            name: {"data": c.data.cpu(), "producer": c.producer, "kind": c.kind,
                   "snapshot": c.snapshot}
            for name, c in self._columns.items()
        }

    def load_state_dict(self, state: dict[str, dict[str, object]]) -> None:
        self._columns = {
            name: Column(
                torch.as_tensor(s["data"]).to(self.device), str(s["producer"]),
                s["kind"],  # type: ignore[arg-type]
                bool(s["snapshot"]),
            )
            for name, s in state.items()
        }
