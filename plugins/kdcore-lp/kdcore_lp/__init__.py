"""kdcore plugin: label propagation (Iscen et al. 2019; AML-KD's initial, teacher-guided and
mutual LP).

Components: ``initial_lp``, ``teacher_lp``, ``mutual_lp``. The functions in
:mod:`kdcore_lp.graph`, :mod:`kdcore_lp.solve` and :mod:`kdcore_lp.propagation` are usable on
their own.
"""

from __future__ import annotations

from collections.abc import Mapping

import kdcore
from kdcore_lp.component import COMPONENTS, InitialLP, LabelPropagation, MutualLP, TeacherLP
from kdcore_lp.propagation import Propagated, propagate, propagate_features

__all__ = ["InitialLP", "LabelPropagation", "MutualLP", "Propagated", "TeacherLP", "propagate",
           "propagate_features"]


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return dict(COMPONENTS)  # a copy: whoever changes it leaves the plugin's own alone
