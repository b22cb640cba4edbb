"""Shared fixtures: tiny recipes on the built-in digits data, run in process."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcore.testing import quiet_logs  # noqa: F401 (autouse fixtures)

TINY_RECIPE = """
[run]
name = "tiny"
seed = {seed}
device = "cpu"

[data]
dataset = "digits"
val_fraction = 0.1
test_fraction = 0.2
train_subset = 400
batch_size = 64

[data.noise]
model = "symmetric"
params = {{ rate = 0.4 }}

[models.teacher]
arch = "mlp"
params = {{ hidden = [32] }}
optimizer = {{ lr = 0.1 }}

[models.student]
arch = "mlp"
params = {{ hidden = [16] }}
optimizer = {{ lr = 0.1 }}

[[stages]]
name = "teacher"
epochs = 2
train = ["teacher"]
keep = "best_val"

[[stages.components]]
use = "ce"

[[stages]]
name = "student"
epochs = 2
train = ["student"]

[[stages.components]]
use = "ce"
weight = 0.5

[[stages.components]]
use = "hinton_kd"
name = "kd"
weight = 0.5
params = {{ teacher = "teacher" }}
"""


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A two-stage KD recipe that trains in about a second."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE.format(seed=0))
    return path


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
