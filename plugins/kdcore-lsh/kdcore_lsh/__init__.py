"""kdcore plugin: LSH feature mimicking ("Distilling Knowledge by Mimicking Features").

Components (transfer terms; see ``kdcore_lsh.mimic`` and the package README):
    l2: element-wise MSE between the student's and the teacher's penultimate features.
    lsh: BCE of the student's random projections on the teacher's hash bits.
    lshl2: l2 + lsh, the method's main loss.
    lshl2_s: lshl2 averaged only over the samples the teacher classifies correctly.

Each adds a linear connector to the student when its feature size differs from the teacher's.
"""

from __future__ import annotations

from collections.abc import Mapping

import kdcore
from kdcore_lsh.connector import ConnectedModel, attach_connector
from kdcore_lsh.mimic import COMPONENTS


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return COMPONENTS


__all__ = ["COMPONENTS", "ConnectedModel", "attach_connector"]
