"""kdcore plugin: ambiguity-aware weight estimation (AWE) of AML-KD.

Component ``awe``: per-sample weights from how close a sample's feature is to its label's class
prototype compared with the others, as loss weights (a weighting component) and as label
propagation seed weights (the ledger column ``awe/seed_weight``).
"""

from __future__ import annotations

from collections.abc import Mapping

import kdcore
from kdcore_awe.awe import AWE, WeightNet, ambiguity_profile, class_prototypes

__all__ = ["AWE", "WeightNet", "ambiguity_profile", "class_prototypes"]


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return {"awe": AWE}
