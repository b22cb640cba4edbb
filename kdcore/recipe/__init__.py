"""Recipes: TOML files read into typed, validated attrs objects.

* :mod:`kdcore.recipe.schema`: the attrs classes, one per table, with every number's range;
* :mod:`kdcore.recipe.resolve`: reading files, ``extends``, merging, ``--set`` overrides
  (:func:`load_recipe`, :func:`recipe_from_dict`);
* :mod:`kdcore.recipe.rules`: the cross-field checks (:func:`check_consistency`);
* :mod:`kdcore.recipe.writer`: resolved recipes written back as TOML.

Everything is re-exported here; import from ``kdcore.recipe``.
"""

from kdcore.recipe.resolve import (
    MAX_DEPTH,
    MAX_EXTENDS,
    apply_override,
    check_plain,
    load_raw,
    load_recipe,
    merge,
    parse_override,
    read_toml,
    recipe_from_dict,
    resolved_now,
)
from kdcore.recipe.rules import check_consistency
from kdcore.recipe.schema import (
    MAX_BATCH_SIZE,
    MAX_SEED,
    MAX_THREADS,
    AugmentConfig,
    ComponentConfig,
    DataConfig,
    ModelConfig,
    NoiseConfig,
    OptimizerConfig,
    Recipe,
    RunConfig,
    ScheduleConfig,
    StageConfig,
)
from kdcore.recipe.writer import dumps_toml
from kdcore.validators import MAX_LR

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_DEPTH",
    "MAX_EXTENDS",
    "MAX_LR",
    "MAX_SEED",
    "MAX_THREADS",
    "AugmentConfig",
    "ComponentConfig",
    "DataConfig",
    "ModelConfig",
    "NoiseConfig",
    "OptimizerConfig",
    "Recipe",
    "RunConfig",
    "ScheduleConfig",
    "StageConfig",
    "apply_override",
    "check_consistency",
    "check_plain",
    "dumps_toml",
    "load_raw",
    "load_recipe",
    "merge",
    "parse_override",
    "read_toml",
    "recipe_from_dict",
    "resolved_now",
]
