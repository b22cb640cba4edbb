"""kdcore's own plugin: the built-in datasets, noise models, architectures and baselines.

Registered through the ``kdcore`` entry-point group exactly as a third-party plugin is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kdcore.builtin.components import COMPONENTS
from kdcore.component import Component
from kdcore.data.augment import AUGMENTATIONS
from kdcore.data.loaders import DATASETS
from kdcore.data.noise import NOISE_MODELS
from kdcore.hookspecs import hookimpl
from kdcore.loggers import LOGGERS
from kdcore.models.zoo import MODELS


@hookimpl
def kdcore_add_components() -> Mapping[str, type[Component]]:
    return COMPONENTS


@hookimpl
def kdcore_add_datasets() -> Mapping[str, Callable[..., Any]]:
    return DATASETS


@hookimpl
def kdcore_add_noise_models() -> Mapping[str, Callable[..., Any]]:
    return NOISE_MODELS


@hookimpl
def kdcore_add_models() -> Mapping[str, Callable[..., Any]]:
    return MODELS


@hookimpl
def kdcore_add_augmentations() -> Mapping[str, Callable[..., Any]]:
    return AUGMENTATIONS


@hookimpl
def kdcore_add_loggers() -> Mapping[str, Callable[..., Any]]:
    return LOGGERS
