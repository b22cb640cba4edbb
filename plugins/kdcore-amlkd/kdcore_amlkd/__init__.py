"""kdcore plugin: the loss pieces of AML-KD (Ambiguity-guided Mutual Label refinery KD).

Components ``mixup_ce``, ``mixup_kd`` and ``relational_kd``. AML-KD as a whole is a recipe
(``recipes/amlkd.toml``) combining them with ``kdcore-selection`` (small-loss),
``kdcore-lp`` (initial, teacher-guided and mutual LP) and ``kdcore-awe`` (AWE).
"""

from __future__ import annotations

from collections.abc import Mapping

import kdcore
from kdcore_amlkd.losses import MixupCE, MixupKD, RelationalKD, gram_mse, mixup_batch

__all__ = ["MixupCE", "MixupKD", "RelationalKD", "gram_mse", "mixup_batch"]


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return {"mixup_ce": MixupCE, "mixup_kd": MixupKD, "relational_kd": RelationalKD}
