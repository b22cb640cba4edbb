"""kdcore plugin: small-loss sample selection.

Components:
    small_loss: keep the samples with the smallest loss (Co-teaching, AML-KD's selection).
"""

from __future__ import annotations

from collections.abc import Mapping

import kdcore
from kdcore_selection.small_loss import SmallLoss


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return {"small_loss": SmallLoss}
