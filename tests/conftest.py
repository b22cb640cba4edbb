"""Shared fixtures: tiny recipes on the built-in digits data, run in process."""

from __future__ import annotations

from collections.abc import Iterator
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
def warnings() -> Iterator[list[str]]:
    """The messages of the warnings logged during the test."""
    from loguru import logger

    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING")
    yield seen
    logger.remove(sink)


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A two-stage KD recipe that trains in about a second."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE.format(seed=0))
    return path


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# a teacher stage, then the student over two stages: a plain warm-up and a refining stage with
# a selection (label smoothing refines, all_samples selects)
REPORT_RECIPE = TINY_RECIPE[:TINY_RECIPE.index("[[stages]]")] + """
[[stages]]
name = "teacher"
epochs = 1
train = ["teacher"]
[[stages.components]]
use = "ce"
[[stages]]
name = "warm"
epochs = 1
train = ["student"]
[[stages.components]]
use = "ce"
[[stages]]
name = "smooth"
epochs = 2
train = ["student"]
[[stages.components]]
use = "label_smoothing"
params = {{ epsilon = {eps} }}
[[stages.components]]
use = "all_samples"
[[stages.components]]
use = "ce"
"""


@pytest.fixture(scope="session")
def report_grid(tmp_path_factory):
    """Two variants x two seeds of :data:`REPORT_RECIPE`, run once for the report tests."""
    from click.testing import CliRunner

    from kdcore.cli import main

    root = tmp_path_factory.mktemp("figgrid")
    for variant, eps in (("ls", 0.3), ("ls-weak", 0.05)):
        for seed in (0, 1):
            recipe = root / f"{variant}-{seed}.toml"
            recipe.write_text(REPORT_RECIPE.format(seed=seed, eps=eps))
            out = root / "out" / variant / f"seed{seed}"
            res = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--quiet"],
                                     catch_exceptions=False)
            assert res.exit_code == 0, res.output
    return root / "out"


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """The tiny recipe (``tiny.toml``) run three ways, once per session, for tests that copy a
    run directory and damage the copy: ``finished``; ``started``, stopped in its student stage
    (its checkpoints: the first epoch, the teacher stage's end); ``other``, finished under
    another recipe (``other.toml``, the student's hidden layer 8 wide)."""
    from kdcore import PluginHost, load_recipe, run_recipe
    from kdcore.testing import InterruptAt, Interrupted

    root = tmp_path_factory.mktemp("tiny_runs")
    recipe = root / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(seed=0))
    run_recipe(load_recipe(recipe), out=str(root / "finished"))
    with pytest.raises(Interrupted):
        run_recipe(load_recipe(recipe), out=str(root / "started"),
                   host=PluginHost(extra=[InterruptAt(epoch=0, batch=1, stage="student")]))
    other = root / "other.toml"
    other.write_text(recipe.read_text().replace("hidden = [16]", "hidden = [8]"))
    run_recipe(load_recipe(other), out=str(root / "other"))
    return root
