"""Shared helpers of the F&F plugin's tests: quiet logs, one thread, tiny ncifar-digits runs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kdcore
from kdcore.plan import build_plan
from kdcore.testing import one_thread, quiet_logs  # noqa: F401 (autouse fixtures)

# digits 8 and 9 open (20%), exponential imbalance 0.25, 20% symmetric closed noise: ~800
# training images, an MLP epoch takes a few milliseconds
RECIPE = """
[run]
name = "ff-test"
seed = {seed}
device = "cpu"
threads = 1

[data]
dataset = "ncifar"
params = {data_params}
val_fraction = 0.1
batch_size = 64

[data.noise]
model = "ncifar_noise"
params = {noise_params}

[models.student]
arch = "mlp"
params = {{ hidden = [16] }}
optimizer = {{ name = "sgd", lr = {lr}, momentum = 0.9, weight_decay = 5e-4 }}

{stages}
"""

DATA = ('{ base = "digits", open_classes = [8, 9], open_rate = 0.2, imbalance = "exponential", '
        'imbalance_ratio = 0.25 }')
NOISE = '{ closed = "symmetric", closed_rate = 0.2 }'


def stage(name: str, epochs: int, *components: str, keep: str = "last") -> str:
    """One ``[[stages]]`` table training the student, with ``components`` (TOML snippets)."""
    body = "".join(components)
    return (f'[[stages]]\nname = "{name}"\nepochs = {epochs}\ntrain = ["student"]\n'
            f'keep = "{keep}"\n{body}')


def comp(use: str, params: str = "{}", **entry: str) -> str:
    """One ``[[stages.components]]`` table; ``entry`` adds raw TOML keys (name, weight...)."""
    extra = "".join(f"{k} = {v}\n" for k, v in entry.items())
    return f'[[stages.components]]\nuse = "{use}"\n{extra}params = {params}\n'


def write_ff(tmp_path: Path, stages: str, *, data: str = DATA, noise: str = NOISE,
             seed: int = 0, lr: float = 0.1, name: str = "run") -> Path:
    """Write the tiny recipe with ``stages`` to ``<name>.toml``; returns its path."""
    path = tmp_path / f"{name}.toml"
    path.write_text(RECIPE.format(seed=seed, data_params=data, noise_params=noise, lr=lr,
                                  stages=stages))
    return path


def run_ff(tmp_path: Path, stages: str, *, observers: Iterable[Any] = (), name: str = "run",
           overrides: tuple[str, ...] = (), **options: Any) -> Path:
    """Run the tiny recipe with ``stages``; returns the run directory."""
    path = write_ff(tmp_path, stages, name=name, **options)
    host = kdcore.PluginHost(extra=list(observers))
    kdcore.run_recipe(kdcore.load_recipe(path, overrides), out=str(tmp_path / name), host=host,
                      progress=False)
    return tmp_path / name


def digits_lookup() -> dict[bytes, set[int]]:
    """The base digits' label(s) of every distinct image, keyed by the image's bytes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0)
    table: dict[bytes, set[int]] = {}
    for row, label in zip(x, bunch.target):
        table.setdefault(row.tobytes(), set()).add(int(label))
    return table


class Helpers:
    """What the ``ff`` fixture gives a test: tiny runs in its ``tmp_path`` and TOML helpers."""

    DATA = DATA
    NOISE = NOISE
    stage = staticmethod(stage)
    comp = staticmethod(comp)
    digits_lookup = staticmethod(digits_lookup)

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path

    def run(self, stages: str, **options: Any) -> Path:
        return run_ff(self.tmp_path, stages, **options)

    def recipe(self, stages: str, *, overrides: tuple[str, ...] = (), **options: Any
               ) -> kdcore.Recipe:
        """The tiny recipe with ``stages``, resolved (written to ``<name>.toml``)."""
        return kdcore.load_recipe(write_ff(self.tmp_path, stages, **options), overrides)

    def plan(self, stages: str, *, plugins: Iterable[Any] = (), **options: Any):
        """The plan of the tiny recipe (every check of a run before any data is loaded)."""
        return build_plan(self.recipe(stages, **options),
                          kdcore.PluginHost(extra=list(plugins)))

    def dry(self, stages: str, **options: Any):
        """Everything a run does before its first batch (``kdcore check``), writing nothing."""
        return kdcore.dry_setup(self.recipe(stages, **options), kdcore.PluginHost())


@pytest.fixture
def ff(tmp_path: Path) -> Helpers:
    return Helpers(tmp_path)
