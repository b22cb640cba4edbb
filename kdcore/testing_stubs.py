"""Stand-ins for plugin tests: a tiny model for the component harness, and a component that
reads one ledger column (a downstream method, for tests of the plan's column checks).
Re-exported by :mod:`kdcore.testing`.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from kdcore.component import Component
from kdcore.context import ColumnName, RunContext, StartHook
from kdcore.hookspecs import hookimpl
from kdcore.models.base import KDModel


class TinyNet(KDModel):
    """A one-hidden-layer MLP of a few parameters, a :class:`kdcore.KDModel` like kdcore's own
    models (``forward`` returns ``(logits, features)``; ``trunk`` and ``classifier`` are its
    parts), for the harness (``models={"student": TinyNet()}``).

    The trunk is ``Linear(d, hidden)``, then ``BatchNorm1d`` if ``batch_norm``, the activation,
    then ``Dropout`` if ``dropout``; the classifier is ``Linear(hidden, c)``. The layers are
    built in that order, so a seed set before gives the same weights every time.

    Args:
        d: input features.
        c: classes.
        hidden: feature width.
        activation: ``"relu"`` or ``"tanh"``.
        batch_norm: a batch-norm layer (a buffer that code freezing a trunk must leave alone).
        dropout: the dropout probability (what a model in eval mode must switch off).
    """

    def __init__(self, d: int = 6, c: int = 4, hidden: int = 8, *, activation: str = "relu",
                 batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(d, hidden)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append({"relu": nn.ReLU, "tanh": nn.Tanh}[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.trunk = nn.Sequential(*layers)
        self.classifier = nn.Linear(hidden, c)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


@attrs.frozen
class ColumnReaderParams:
    """Args:
        column: the ledger column read (checked by the plan like any ``ColumnName``).
    """

    column: ColumnName = ColumnName("")


class ColumnReader(Component):
    """Reads one ledger column at every epoch start: a stand-in for a downstream method, to
    test that the plan accepts a column read after its writer and refuses it before. Register
    it with :class:`ColumnReaderPlugin` (``use = "column_reader"``)."""

    Params = ColumnReaderParams

    def reads_at_start(self) -> dict[str, StartHook]:
        """Declared, so that the plan refuses a column not there by each epoch's start (a
        selector's mask of the same stage: undeclared, ``check`` had accepted it and the run
        stopped at the stage's first epoch)."""
        return dict.fromkeys(self.reads(), "on_epoch_start")

    def on_epoch_start(self, ctx: RunContext) -> None:
        ctx.ledger[self.params.column]


class ColumnReaderPlugin:
    """An in-process plugin providing ``column_reader``."""

    @hookimpl
    def kdcore_add_components(self) -> dict[str, type[Component]]:
        return {"column_reader": ColumnReader}
