"""Resume is exact whatever the recipe composes: registered components drawn at random (every
installed plugin's), a stage of them after the teacher's, sometimes the same composition again
in a later stage (state carried across the boundary), each run stopped in the middle of a
random epoch of a composed stage and resumed, against the same recipe uninterrupted.

Components' own resume tests cover their recipes; this one covers what they do together: two
mixup terms sharing one mix, a selector beside a meta-learner, a refiner before a mutual term,
each drawing from its own generator and the global one in the order a batch calls them.
Each entry sets about half of its component's ``Literal`` and ``bool`` parameters at random
(``kdcore.testing.random_choices``: a selection's scope, a mutual method's order, AWE's mode);
numeric settings keep their defaults in ``CASES`` of them and are drawn in ``NUMBER_CASES``
more (``numbers=True``: a warm-up of 0 or 50 epochs, a rate of 0.9, LP every 7 epochs).
Scratch runs of this draw found no difference in 60 compositions with default parameters, 80
with random choices and 40 with random numbers (session 31), stopped mid-epoch, when it was
written; the test keeps ``CASES + NUMBER_CASES`` of them (not restoring the components'
generators fails three, their states four).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from kdcore.testing import (
    InterruptAt,
    Interrupted,
    accepted_compositions,
    assert_same_history,
    run_tiny,
)

SEED = 20261203
CASES = 28
NUMBER_CASES = 12
def _compositions() -> list[tuple[dict[str, Any], str, int, int]]:
    """``CASES`` draws that ``kdcore check`` accepts, then ``NUMBER_CASES`` whose numbers are
    drawn too (an epoch to start at, a rate of 0, an update every 7 epochs), each with where
    to stop it."""
    recipes = accepted_compositions(random.Random(SEED), CASES, choices=True, train_subset=200,
                                    gold_per_class=3, batch_size=32)
    recipes += accepted_compositions(random.Random(SEED + 2), NUMBER_CASES, choices=True,
                                     numbers=True, train_subset=200, gold_per_class=3,
                                     batch_size=32)
    where = random.Random(SEED + 1)
    out = []
    for recipe in recipes:
        stage = where.choice(recipe["stages"][1:])
        # a 200-sample run has 180 training samples after validation: 6 batches of 32
        out.append((recipe, stage["name"], where.randrange(stage["epochs"]),
                    where.randint(0, 4)))
    return out


COMPOSITIONS = _compositions()


def _id(case: tuple[dict[str, Any], str, int, int]) -> str:
    recipe, where, epoch, batch = case
    uses = "+".join(c["use"] for c in recipe["stages"][1]["components"])
    return f"{uses}@{where}{epoch}.{batch}"


def test_the_draw_composes_many_components_into_several_recipes():
    uses = {c["use"] for recipe, *_ in COMPOSITIONS for c in recipe["stages"][1]["components"]}
    assert len(uses) >= 12
    assert any(len(recipe["stages"]) == 3 for recipe, *_ in COMPOSITIONS)
    assert any(recipe["stages"][1]["train"] == ["student", "peer"]
               for recipe, *_ in COMPOSITIONS)


@pytest.mark.slow
@pytest.mark.parametrize("case", COMPOSITIONS, ids=[_id(c) for c in COMPOSITIONS])
def test_a_composition_stopped_mid_epoch_resumes_bit_for_bit(case, tmp_path: Path):
    recipe, where, epoch, batch = case
    run_tiny(recipe, tmp_path / "whole")
    with pytest.raises(Interrupted):
        run_tiny(recipe, tmp_path / "cut", plugins=[InterruptAt(epoch, batch, where)])
    run_tiny(recipe, tmp_path / "cut", resume=True)
    assert_same_history(tmp_path / "whole", tmp_path / "cut")
