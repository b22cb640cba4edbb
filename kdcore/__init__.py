"""kdcore: knowledge distillation under noisy labels.

The public API (what plugins may import) is what this module exports, plus the documented
modules :mod:`kdcore.hookspecs`, :mod:`kdcore.losses`, :mod:`kdcore.metrics`,
:mod:`kdcore.meta`, :mod:`kdcore.config` and :mod:`kdcore.history`.
"""

from kdcore.component import Batch, Component, ComponentSpec, ModelOutput, NoParams, PerSample
from kdcore.data.base import ArrayDataset, DatasetSplits, NoiseContext
from kdcore.engine import run_recipe
from kdcore.errors import KdcoreError, RecipeError, TrainingDiverged
from kdcore.history import History
from kdcore.hookspecs import hookimpl, hookspec
from kdcore.ledger import Ledger
from kdcore.models.base import KDModel, ModelSpec
from kdcore.plugins import PluginHost, active_host
from kdcore.recipe import Recipe, load_recipe
from kdcore.run import Run

__version__ = "0.1.0"

__all__ = [
    "ArrayDataset",
    "Batch",
    "Component",
    "ComponentSpec",
    "DatasetSplits",
    "History",
    "KDModel",
    "KdcoreError",
    "Ledger",
    "ModelOutput",
    "ModelSpec",
    "NoParams",
    "NoiseContext",
    "PerSample",
    "PluginHost",
    "Recipe",
    "RecipeError",
    "Run",
    "TrainingDiverged",
    "active_host",
    "hookimpl",
    "hookspec",
    "load_recipe",
    "run_recipe",
]
