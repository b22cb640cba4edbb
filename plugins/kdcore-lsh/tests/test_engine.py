"""The components inside the engine: the selective mask, composition with a refiner, the hash
state built at the stage start, and exact resume."""

from __future__ import annotations

import pytest
import torch

import kdcore
from kdcore.testing import InterruptAt, Interrupted, assert_same_history, component, stage
from kdcore_lsh import functional as lshf


class ShiftRefiner(kdcore.Component):
    """A test refiner of another "package": moves every third sample's target to the next class."""

    def refine(self, batch, targets):
        shifted = targets.roll(1, dims=1)
        pick = (batch.index % 3 == 0).unsqueeze(1)
        return torch.where(pick, shifted, targets)


class RefinerPlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"test_shift": ShiftRefiner}


class MaskCheck:
    """After every student batch: the mask, and how the engine reduced the loss with it."""

    def __init__(self, name: str, against: str, ce_weight: float, weight: float):
        self.name, self.against = name, against
        self.ce_weight, self.weight = ce_weight, weight
        self.batches = 0
        self.differs_from_noisy = 0

    @kdcore.hookimpl
    def kdcore_batch_end(self, run, batch, losses):
        if run.stage.name != "student":
            return
        ledger, index = run.ledger, batch.index
        mask = ledger[f"select/{self.name}"][index]
        teacher = batch.out("teacher").logits.argmax(1)
        label = batch.targets.argmax(1) if self.against == "targets" else batch.noisy_label
        assert mask.dtype == torch.bool
        assert torch.equal(mask, teacher == label)
        self.differs_from_noisy += int((mask != (teacher == batch.noisy_label)).sum())
        # CE averages over the whole batch; only the mimicking term is masked
        ce = batch.records["loss/ce"].double()
        feat = batch.records[f"loss/{self.name}"].double()
        m = mask.double()
        expected = self.ce_weight * ce.mean() + self.weight * (m * feat).sum() / m.sum()
        assert float(losses["student"].detach()) == pytest.approx(float(expected), rel=1e-5)
        self.batches += 1


@pytest.mark.parametrize("against", ["targets", "noisy"])
def test_selective_mask_is_the_teacher_correct_samples_after_refinement(run_lsh, comp, against):
    check = MaskCheck("feat", against, ce_weight=0.5, weight=3.0)
    # the refiner comes after the transfer in the recipe: refinements still run first
    components = (comp("ce", weight=0.5, params={}),
                  comp("lshl2_s", name="feat", weight=3.0,
                       params={"teacher": "teacher", "correct_against": against}),
                  comp("test_shift", params={}))
    run_lsh(*components, epochs=2, plugins=[RefinerPlugin(), check])
    assert check.batches == 10  # 240 training samples in batches of 64, two epochs
    # the shifted targets changed the verdict for some samples: it was read after refinement
    assert (check.differs_from_noisy > 0) is (against == "targets")


class HashCheck:
    """At each student epoch start: the projection's shape, sigma and the median split."""

    def __init__(self, name: str = "lshl2"):
        self.name = name
        self.seen = []

    @kdcore.hookimpl
    def kdcore_epoch_start(self, run, epoch):
        if not run.stage.name.startswith("student"):
            return
        mimic = next(c for c in run.components if c.name == self.name)
        teacher = run.models["teacher"]
        features = run.features("teacher").features
        bits = lshf.hash_bits(features, mimic.projection, mimic.bias)
        self.seen.append({
            "shape": tuple(mimic.projection.shape),
            "sigma": mimic.sigma,
            "teacher_std": float(teacher.classifier.weight.std()),
            "ones": bits.sum(dim=0),
            "n": features.shape[0],
            "projection": mimic.projection.clone(),
        })


def test_median_bias_splits_the_training_features_and_sigma_is_the_teacher_fc_std(run_lsh, comp):
    check = HashCheck()
    run_lsh(comp("ce", params={}), comp("lshl2"), epochs=2, plugins=[check])
    assert len(check.seen) == 2
    first = check.seen[0]
    assert first["shape"] == (32 * 32, 32)  # N = 32 D by default
    assert first["sigma"] == pytest.approx(first["teacher_std"])
    n = first["n"]
    assert first["ones"].tolist() == [n // 2] * (32 * 32)
    # drawn once per stage, frozen
    assert torch.equal(first["projection"], check.seen[1]["projection"])


def test_given_sigma_hashes_and_zero_bias(run_lsh, comp):
    check = HashCheck()
    params = {"teacher": "teacher", "num_hashes": 100, "sigma": 0.5, "bias": "zero"}
    run_lsh(comp("ce", params={}), comp("lshl2", params=params), plugins=[check])
    seen = check.seen[0]
    assert seen["shape"] == (100, 32) and seen["sigma"] == 0.5


SECOND_STAGE = stage("student2", 1, ["student"], component("ce"),
                     component("lshl2", "feat", params={"teacher": "teacher"}))


def test_projection_carries_into_the_next_stage_of_the_same_component(run_lsh, comp):
    check = HashCheck("feat")
    run_lsh(comp("ce", params={}), comp("lshl2", name="feat"), more_stages=[SECOND_STAGE],
            plugins=[check])
    assert len(check.seen) == 2
    assert torch.equal(check.seen[0]["projection"], check.seen[1]["projection"])


def test_bad_parameters_are_rejected(run_lsh, comp):
    with pytest.raises(kdcore.RecipeError, match=r"params\.bias"):
        run_lsh(comp("lsh", params={"bias": "mode"}))
    with pytest.raises(kdcore.RecipeError, match="num_hashes"):
        run_lsh(comp("lsh", params={"num_hashes": 0}))
    with pytest.raises(kdcore.RecipeError, match="did you mean 'correct_against'"):
        run_lsh(comp("lshl2_s", params={"correct_agains": "noisy"}))
    with pytest.raises(kdcore.RecipeError, match="teacher role 'techer'"):
        run_lsh(comp("l2", params={"teacher": "techer"}))


def test_resume_mid_stage_is_exact(run_lsh, comp, tmp_path):
    components = (comp("ce", params={}), comp(
        "lshl2_s", name="feat", weight=2.0,
        params={"teacher": "teacher", "num_hashes": 64, "bias_update": "epoch"}))
    straight = run_lsh(*components, epochs=3, out=tmp_path / "straight")
    with pytest.raises(Interrupted):
        run_lsh(*components, epochs=3, out=tmp_path / "cut",
                plugins=[InterruptAt(1, 1, "student")])
    resumed = run_lsh(*components, epochs=3, out=tmp_path / "cut", resume=True)
    assert resumed == straight
    assert_same_history(tmp_path / "cut", tmp_path / "straight")
