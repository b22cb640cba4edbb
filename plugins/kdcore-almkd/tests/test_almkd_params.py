"""ALM-KD's table values are float32: ``lambda0 = 1e300`` or a clip bound of ``-1e308`` passed
``kdcore check`` and stopped the run when the table was filled ("value cannot be converted to
type float without overflow"); they are refused now, while ``inf`` (no bound) stays taken."""

from __future__ import annotations

import math
import re

import pytest

from kdcore.errors import KdcoreError
from kdcore.testing import check_tiny, component, stage, teacher_stage, tiny_recipe


def _almkd(**params) -> dict:
    return tiny_recipe(teacher_stage(1), stage("s", 1, ["student"],
                                                component("almkd", params=params)),
                       gold_per_class=3)


@pytest.mark.parametrize(("params", "needle"), [
    ({"lambda0": 1e300}, "'lambda0' must be a float32 number (magnitude at most 3.4e38, or "
                         "inf), got 1e+300"),
    ({"lambda_min": -3.5e38}, "'lambda_min' must be a float32 number"),
    ({"lambda_max": 1e300}, "'lambda_max' must be a float32 number"),
    ({"step": math.inf}, "'step' must be a finite number, got inf"),
])
def test_numbers_the_float32_table_cannot_hold_are_refused(params, needle):
    with pytest.raises(KdcoreError, match=re.escape(needle)):
        check_tiny(_almkd(**params))


def test_infinite_clip_bounds_and_the_largest_float32_are_taken():
    check_tiny(_almkd(lambda_min=-math.inf, lambda_max=math.inf, lambda0=3.4e38))
