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
    assert str(err.value) == ("run.device: 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N' "
                              f"(N: a GPU index), got {name!r}")


def test_cuda_without_a_gpu_is_one_clear_line(gpus) -> None:
    gpus(0)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(RecipeError, match=f"'{name}' was asked for but no CUDA GPU is "
                                              "available here; use 'auto' or 'cpu'") as err:
            resolve_device(name)
        assert err.value.key == "run.device"


def test_a_gpu_index_beyond_the_machine(gpus) -> None:
    gpus(2)
    with pytest.raises(RecipeError, match=r"'cuda:2' was asked for but this machine has 2 "
                                          r"GPU\(s\): cuda:0 to cuda:1") as err:
        resolve_device("cuda:2")
    assert err.value.key == "run.device"


# -- free memory and the size check -------------------------------------------------------------


def test_a_gpus_free_memory_is_what_cuda_reports_for_that_gpu(monkeypatch) -> None:
    from kdcore.device import free_memory

    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device: asked.append(device) or (123 * 2**20, 8 * 2**30))
    gpu = torch.device("cuda:1")
    assert free_memory(gpu) == 123 * 2**20 and asked == [gpu]


def test_the_hosts_free_memory_is_meminfos_available_pages(monkeypatch) -> None:
    import io

    import kdcore.device as device

    opened = []

    def fake_open(path, *args, **kwargs):
        opened.append(path)
        return io.StringIO("MemTotal:       16000 kB\nMemFree:          900 kB\n"
                           "MemAvailable:    2048 kB\nBuffers:          10 kB\n")

    monkeypatch.setattr(device, "open", fake_open, raising=False)
    assert device.free_memory(torch.device("cpu")) == 2048 * 1024
    assert opened == ["/proc/meminfo"]


def test_without_meminfo_the_free_pages_are_a_lower_bound(monkeypatch) -> None:
    import kdcore.device as device

    def no_file(path, *args, **kwargs):
        raise FileNotFoundError(path)

    names = {"SC_AVPHYS_PAGES": 10, "SC_PAGE_SIZE": 4096}

    def sysconf(name):
        if name not in names:  # as os.sysconf: the names are exact
            raise ValueError(f"unrecognized configuration name {name!r}")
        return names[name]

    monkeypatch.setattr(device, "open", no_file, raising=False)
    monkeypatch.setattr(device.os, "sysconf", sysconf)
    assert device.free_memory(torch.device("cpu")) == 10 * 4096
    # a meminfo without the line falls back the same way
    import io

    monkeypatch.setattr(device, "open", lambda *a, **k: io.StringIO("MemFree: 1 kB\n"),
                        raising=False)
    assert device.free_memory(torch.device("cpu")) == 10 * 4096
    names.clear()
    assert device.free_memory(torch.device("cpu")) is None


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (2**20 - 1, "1024.0 KiB"), (2**20, "1.0 MiB"), (3 * 2**20, "3.0 MiB"),
    (2**30, "1.0 GiB"), (5 * 2**30 // 2, "2.5 GiB"), (2**40 - 1, "1024.0 GiB"),
    (2**40, "1.0 TiB"), (2**50 - 2**39, "1023.5 TiB"), (2**50, "1.0 PiB"),
    (10**4 * 2**50 - 1, "10000.0 PiB"), (10**4 * 2**50, "1e+04 PiB"),
    (4 * 10**24, "3.6e+09 PiB"),
])
def test_sizes_in_messages(size: int, text: str) -> None:
    from kdcore.errors import byte_size

    assert byte_size(size) == text


def test_check_fits_refuses_more_than_half_the_free_memory(monkeypatch) -> None:
    import kdcore.device as device

    monkeypatch.setattr(device, "free_memory", lambda dev: 4 * 2**20)
    device.check_fits("the ledger", 2 * 2**20, torch.device("cpu"), "fewer classes")
    with pytest.raises(RecipeError) as err:
        device.check_fits("the ledger", 2 * 2**20 + 1, torch.device("cpu"), "fewer classes",
                          key="data.train_subset")
    assert str(err.value).endswith("the ledger needs 2.0 MiB; 4.0 MiB are free on cpu (fewer "
                                   "classes)") and err.value.key == "data.train_subset"
    monkeypatch.setattr(device, "free_memory", lambda dev: None)  # unknown: nothing refused
    device.check_fits("the ledger", 2**60, torch.device("cpu"), "fewer classes")
