"""Shared helpers of the SMKD plugin's tests: quiet logs and tiny digits recipes."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from loguru import logger

import kdcore

# Two peers on a few hundred digits, one thread: a run takes about a second.
PEERS_RECIPE = """
[run]
name = "peers"
seed = {seed}
device = "cpu"
checkpoint_interval_s = 0  # every epoch: the resume tests kill mid-stage
threads = 1

[data]
dataset = "digits"
train_subset = {subset}
batch_size = {batch}

[data.noise]
model = "symmetric"
params = {{ rate = 0.4 }}

[models.peer_a]
arch = "mlp"
params = {{ hidden = [16] }}
optimizer = {{ name = "sgd", lr = 0.1, momentum = 0.9, weight_decay = 5e-4 }}

[models.peer_b]
arch = "mlp"
params = {{ hidden = [32, 32] }}
optimizer = {{ name = "sgd", lr = 0.1, momentum = 0.9, weight_decay = 5e-4 }}

{extra_models}
[[stages]]
name = "mutual"
epochs = {epochs}
train = {train}

{components}
"""


def make_component(use: str, params: str = "{}", **entry: str) -> str:
    """One ``[[stages.components]]`` table; ``entry`` adds raw TOML keys (name, weight...)."""
    extra = "".join(f"{k} = {v}\n" for k, v in entry.items())
    return f"[[stages.components]]\nuse = \"{use}\"\n{extra}params = {params}\n"


def run_peers_in(tmp_path: Path, components: str, *, epochs: int = 1, subset: int = 300,
              batch: int = 64, seed: int = 0, observers: tuple = (), name: str = "run",
              train: str = '["peer_a", "peer_b"]', extra_models: str = "",
              overrides: tuple[str, ...] = ()) -> kdcore.History:
    """Run the two-peer recipe with ``components``; returns the open history."""
    path = tmp_path / f"{name}.toml"
    path.write_text(PEERS_RECIPE.format(seed=seed, subset=subset, batch=batch, epochs=epochs,
                                        components=components, train=train,
                                        extra_models=extra_models))
    host = kdcore.PluginHost(extra=list(observers))
    kdcore.run_recipe(kdcore.load_recipe(path, overrides), out=str(tmp_path / name), host=host)
    return kdcore.History(tmp_path / name)


@pytest.fixture(autouse=True)
def _quiet_logs():
    """Keep loguru's INFO lines out of test output."""
    logger.remove()
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster on a shared CPU (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def component():
    """``component(use, params, **entry)``: one ``[[stages.components]]`` table as TOML."""
    return make_component


@pytest.fixture
def run_peers(tmp_path: Path):
    """``run_peers(components, **options)``: run the two-peer recipe in ``tmp_path``."""
    return functools.partial(run_peers_in, tmp_path)
