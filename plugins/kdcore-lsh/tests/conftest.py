"""Tiny two-stage digits recipes (a teacher stage, then a student stage) run in process."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

import kdcore

RECIPE = """
[run]
name = "lsh-test"
seed = {seed}
device = "cpu"
checkpoint_interval_s = 0  # every epoch: the resume tests kill mid-stage

[data]
dataset = "digits"
train_subset = 300
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
params = {{ hidden = [{student_hidden}] }}
optimizer = {{ lr = 0.1 }}

[[stages]]
name = "teacher"
epochs = 2
train = ["teacher"]

[[stages.components]]
use = "ce"

[[stages]]
name = "student"
epochs = {epochs}
train = ["student"]
{components}
"""

def component(use: str, *, name: str | None = None, weight: float = 1.0,
              params: str = '{ teacher = "teacher" }', extra: str = "") -> str:
    """One ``[[stages.components]]`` table of the student stage."""
    label = f'name = "{name}"\n' if name else ""
    return (f'\n[[stages.components]]\n{label}use = "{use}"\nweight = {weight}\n'
            f"params = {params}\n{extra}")


@pytest.fixture
def comp() -> Callable[..., str]:
    """The :func:`component` helper (``comp("ce", params="{}")`` is the CE term)."""
    return component


@pytest.fixture(autouse=True)
def _quiet_logs():
    logger.remove()
    yield


@pytest.fixture
def run_lsh(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Run a tiny recipe whose student stage has ``components``; returns the summary."""
    count = [0]

    def run(components: str, *, student_hidden: int = 16, epochs: int = 1, seed: int = 0,
            plugins: Iterable[Any] = (), out: Path | None = None, resume: bool = False,
            ) -> dict[str, Any]:
        count[0] += 1
        path = tmp_path / f"r{count[0]}.toml"
        path.write_text(RECIPE.format(seed=seed, student_hidden=student_hidden, epochs=epochs,
                                      components=components))
        host = kdcore.PluginHost(extra=list(plugins))
        out = out or tmp_path / f"run{count[0]}"
        return kdcore.run_recipe(kdcore.load_recipe(path), out=str(out), host=host,
                                 resume=resume, progress=False)

    return run
