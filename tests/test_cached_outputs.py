"""``models.<role>.cache_outputs``: a frozen model's outputs on the training batches read from one
stored pass over the training set instead of a forward pass per batch."""

from __future__ import annotations

import pytest
import torch

from kdcore import ModelOutput, PluginHost, hookimpl, load_recipe, run_recipe
from kdcore.component import Batch
from kdcore.testing import InterruptAt, Interrupted, assert_same_history
from tests.cli_helpers import invoke, one_line_error


def test_a_stored_role_is_read_by_row_and_the_others_are_run():
    logits, features = torch.randn(10, 3), torch.randn(10, 4)
    calls: list[str] = []

    def forward(role: str, x: torch.Tensor) -> ModelOutput:
        calls.append(role)
        return ModelOutput(torch.zeros(len(x), 3), torch.zeros(len(x), 4))

    index = torch.tensor([7, 2, 2, 9])
    batch = Batch(index, torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), forward=forward,
                  num_classes=3, stored={"teacher": lambda: ModelOutput(logits, features)})
    out = batch.out("teacher")
    assert torch.equal(out.logits, logits[[7, 2, 2, 9]])
    assert torch.equal(out.features, features[[7, 2, 2, 9]])
    assert batch.out("teacher") is out and calls == []
    batch.out("student")
    batch.forward("teacher", torch.zeros(2, 5))  # other inputs: not the stored ones
    assert calls == ["student", "teacher"]


class TeacherRows:
    """Counts the rows the teacher is run on in the student stage's training batches and
    stored passes (evaluation is left out: only the trained roles are evaluated)."""

    def __init__(self) -> None:
        self.rows = 0
        self.stage = ""

    @hookimpl
    def kdcore_run_start(self, ctx) -> None:
        ctx.models["teacher"].register_forward_pre_hook(self._count)

    @hookimpl
    def kdcore_stage_start(self, ctx, stage) -> None:
        self.stage = stage.name

    def _count(self, module, args) -> None:
        if self.stage == "student":
            self.rows += len(args[0])


def _student_epochs(tiny_recipe, epochs: int):
    text = tiny_recipe.read_text().replace('train = ["student"]',
                                           f'train = ["student"]\nepochs = {epochs}')
    text = text.replace('name = "student"\nepochs = 2\n', 'name = "student"\n')
    tiny_recipe.write_text(text)
    return tiny_recipe


@pytest.mark.slow
def test_a_cached_teacher_is_run_once_over_the_training_set_and_trains_the_same(tiny_recipe,
                                                                               tmp_path):
    recipe = _student_epochs(tiny_recipe, 3)
    counts, students = {}, {}
    for cached in (False, True):
        rows = TeacherRows()
        out = tmp_path / f"cached{cached}"
        run_recipe(load_recipe(recipe, [f"models.teacher.cache_outputs={str(cached).lower()}"]),
                   out=str(out), host=PluginHost(extra=[rows]))
        counts[cached] = rows.rows
        log = (out / "log.txt").read_text()
        assert ("model teacher: mlp (2,410 parameters), outputs stored where frozen" in log
                ) is cached and "student: mlp (1,210 parameters)\n" in log
        students[cached] = torch.load(out / "models" / "student.pt", weights_only=True)
    n = 400  # train_subset
    assert counts[False] == 3 * n and counts[True] == n
    torch.testing.assert_close(students[True], students[False])


@pytest.mark.slow
def test_resume_of_a_cached_run_matches_the_uninterrupted_one(tiny_recipe, tmp_path):
    recipe = load_recipe(_student_epochs(tiny_recipe, 3), ["models.teacher.cache_outputs=true"])
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_recipe(recipe, out=str(whole))
    with pytest.raises(Interrupted):
        run_recipe(recipe, out=str(resumed),
                   host=PluginHost(extra=[InterruptAt(epoch=1, batch=2, stage="student")]))
    run_recipe(recipe, out=str(resumed), resume=True)
    assert_same_history(whole, resumed)


def test_check_refuses_caching_with_augmentation(tiny_recipe):
    one_line_error(invoke("check", tiny_recipe, "--set", "models.teacher.cache_outputs=true",
                          "--set", 'data.augment=[{name = "cutout", params = {size = 2}}]'),
                   "models.teacher.cache_outputs", "data.augment")


def test_check_refuses_caching_a_role_every_stage_trains(tiny_recipe):
    text = tiny_recipe.read_text().replace('train = ["teacher"]', 'train = ["teacher", "student"]')
    tiny_recipe.write_text(text)
    one_line_error(invoke("check", tiny_recipe, "--set", "models.student.cache_outputs=true"),
                   "models.student.cache_outputs", "trained in every stage")


def test_check_accepts_caching_a_role_frozen_somewhere(tiny_recipe):
    result = invoke("check", tiny_recipe, "--set", "models.teacher.cache_outputs=true",
                    "--set", "models.student.cache_outputs=true")
    assert result.exit_code == 0, result.output
    assert "cache_outputs = true" in result.output


def test_check_ignores_the_key_on_a_disabled_role(tiny_recipe):
    text = tiny_recipe.read_text() + '\n[models.extra]\narch = "mlp"\ncache_outputs = true\n' \
        'enabled = false\n'
    tiny_recipe.write_text(text.replace("[data]\n", '[data]\nparams = {flatten = false}\n'
                                        'augment = [{name = "cutout", params = {size = 2}}]\n',
                                        1))
    result = invoke("check", tiny_recipe)
    assert result.exit_code == 0, result.output
