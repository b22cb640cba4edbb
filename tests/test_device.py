"""kdcore.device: which device strings a recipe may name, and what each becomes.

No GPU is needed: CUDA's presence and count are patched, since what is tested is the decision.
"""

from __future__ import annotations

import pytest
import torch

from kdcore.device import resolve_device
from kdcore.errors import RecipeError


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    """Pretend this machine has ``n`` GPUs."""

    def have(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return have


@pytest.mark.parametrize(("n", "name", "expected"), [
    (0, "auto", "cpu"), (2, "auto", "cuda"), (0, "cpu", "cpu"), (2, "cuda", "cuda"),
    (2, "cuda:1", "cuda:1"), (2, "cuda:0", "cuda:0"),
])
def test_accepted_names(gpus, n: int, name: str, expected: str) -> None:
    gpus(n)
    assert resolve_device(name) == torch.device(expected)


@pytest.mark.parametrize("name", ["meta", "mps", "xla", "CPU", "cpu:0", "cuda:-1", "cuda:",
                                  " cuda", "cuda:0 ", "", "cuda:99999", "gpu"])
def test_other_names_are_refused_with_what_is_accepted(gpus, name: str) -> None:
    gpus(2)
    with pytest.raises(RecipeError) as err:
        resolve_device(name)
    assert err.value.key == "run.device"
    assert f"must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N: a GPU index), got {name!r}" in str(
        err.value)


def test_cuda_without_a_gpu_is_one_clear_line(gpus) -> None:
    gpus(0)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(RecipeError, match=f"'{name}' was asked for but no CUDA GPU is "
                                              "available here; use 'auto' or 'cpu'"):
            resolve_device(name)


def test_a_gpu_index_beyond_the_machine(gpus) -> None:
    gpus(2)
    with pytest.raises(RecipeError, match=r"'cuda:2' was asked for but this machine has 2 "
                                          r"GPU\(s\): cuda:0 to cuda:1"):
        resolve_device("cuda:2")
