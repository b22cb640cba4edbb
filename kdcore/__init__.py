"""kdcore: knowledge distillation under noisy labels.

The public API (what plugins may import) is what this module exports, plus the documented
modules :mod:`kdcore.context`, :mod:`kdcore.hookspecs`, :mod:`kdcore.losses`,
:mod:`kdcore.metrics`, :mod:`kdcore.meta`, :mod:`kdcore.config`, :mod:`kdcore.validators`,
:mod:`kdcore.distributed`, :mod:`kdcore.batching`, :mod:`kdcore.history` and
:mod:`kdcore.testing`.

``import kdcore`` loads what a plugin needs to declare components, datasets and models; the
engine and the HDF5 history load on first use of ``run_recipe``, ``dry_setup``, ``History`` or
the researcher's API (:mod:`kdcore.api`: ``run``, ``ablate``, ``load_history``; docs/api.md;
and ``label_issues``, :mod:`kdcore.label_ranking`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdcore.component import Batch, Component, ComponentSpec, NoParams, PerSample, TransferTerm
from kdcore.context import BatchStore, ColumnName, ModelOutput, Role, RunContext
from kdcore.data.base import ArrayDataset, DatasetSplits, FileDataset, NoiseContext
from kdcore.errors import KdcoreError, NotInHistory, RecipeError, TrainingDiverged
from kdcore.hookspecs import hookimpl, hookspec
from kdcore.ledger import Ledger
from kdcore.models.base import KDModel, ModelSpec
from kdcore.plugins import PluginHost, active_host
from kdcore.recipe import Recipe, load_recipe
from kdcore.terms import PerSampleLoss

if TYPE_CHECKING:
    from kdcore.api import ablate, load_history, run
    from kdcore.engine import dry_setup, run_recipe
    from kdcore.history import History
    from kdcore.label_ranking import label_issues

__version__ = "0.1.0"

_LAZY = {"run_recipe": "kdcore.engine", "dry_setup": "kdcore.engine",
         "History": "kdcore.history", "run": "kdcore.api", "ablate": "kdcore.api",
         "load_history": "kdcore.api", "label_issues": "kdcore.label_ranking"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdcore' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ArrayDataset",
    "Batch",
    "BatchStore",
    "ColumnName",
    "Component",
    "ComponentSpec",
    "DatasetSplits",
    "FileDataset",
    "History",
    "KDModel",
    "KdcoreError",
    "NotInHistory",
    "Ledger",
    "ModelOutput",
    "ModelSpec",
    "NoParams",
    "NoiseContext",
    "PerSample",
    "PerSampleLoss",
    "PluginHost",
    "Recipe",
    "RecipeError",
    "Role",
    "RunContext",
    "TrainingDiverged",
    "TransferTerm",
    "ablate",
    "active_host",
    "dry_setup",
    "hookimpl",
    "hookspec",
    "label_issues",
    "load_history",
    "load_recipe",
    "run",
    "run_recipe",
]
