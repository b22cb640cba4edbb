"""The ``label_file`` noise model: noisy labels read from a shared file, by sample id."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore import History, load_recipe, run_recipe
from kdcore.data.base import NoiseContext
from kdcore.data.label_file import label_file
from kdcore.errors import KdcoreError
from tests.cli_helpers import invoke, one_line_error

LABELS = [3, 0, 2, 2, 1, 0, 3]


def _ctx(rows=None, size=None, classes=4, n=None):
    n = len(rows) if rows is not None else (n or len(LABELS))
    return NoiseContext(labels=torch.zeros(n, dtype=torch.long), num_classes=classes,
                        generator=torch.Generator().manual_seed(0),
                        source_index=None if rows is None else torch.tensor(rows),
                        source_size=size)


def _write(tmp_path, suffix, labels=LABELS):
    path = tmp_path / f"noise{suffix}"
    if suffix == ".npy":
        np.save(path, np.asarray(labels))
    elif suffix == ".json":
        path.write_text(json.dumps(labels))
    else:
        path.write_text("\n".join(str(v) for v in labels) + "\n\n")
    return path


@pytest.mark.parametrize("suffix", [".npy", ".json", ".txt", ".csv"])
def test_each_format_gives_the_rows_the_run_uses(tmp_path, suffix):
    path = _write(tmp_path, suffix)
    assert label_file(_ctx(), path=str(path)).tolist() == LABELS
    rows = [5, 0, 6, 2]  # a split's rows of the loader's training split
    got = label_file(_ctx(rows, size=len(LABELS)), path=str(path))
    assert got.dtype == torch.int64 and got.tolist() == [LABELS[r] for r in rows]


@pytest.mark.parametrize("suffix", [".json", ".txt"])
def test_a_text_file_with_a_byte_order_mark_reads_as_without(tmp_path, suffix):
    path = _write(tmp_path, suffix)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Notepad may save it
    assert label_file(_ctx(), path=str(path)).tolist() == LABELS


def test_rows_without_the_splits_size_must_lie_in_the_file(tmp_path):
    path = str(_write(tmp_path, ".json"))
    assert label_file(_ctx([6, 1]), path=path).tolist() == [LABELS[6], LABELS[1]]
    with pytest.raises(KdcoreError, match="holds 7 labels, but the samples' rows reach 7"):
        label_file(_ctx([7, 1]), path=path)


def test_whole_floats_are_labels(tmp_path):
    np.save(tmp_path / "f.npy", np.asarray(LABELS, dtype=np.float32))
    (tmp_path / "f.json").write_text(json.dumps([float(v) for v in LABELS]))
    for name in ("f.npy", "f.json"):
        assert label_file(_ctx(), path=str(tmp_path / name)).tolist() == LABELS


class _Payload:
    """Writes a marker file when unpickled: what a crafted .npy would do."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_array_is_refused_without_running_it(tmp_path):
    _Payload.marker = str(tmp_path / "ran")
    np.save(tmp_path / "evil.npy", np.array([_Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(KdcoreError, match="not a readable .npy file"):
        label_file(_ctx(n=1), path=str(tmp_path / "evil.npy"))
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("missing.npy", None, "does not exist"),
    ("labels.pt", b"x", "not a .npy, .json, .txt, .csv file"),
    ("d.json", b'{"labels": [1, 2]}', "list of integer labels"),
    ("b.json", b"[1, true, 2, 0, 1, 1, 1]", "list of integer labels"),
    ("s.json", b'[1, "2", 2, 0, 1, 1, 1]', "list of integer labels"),
    ("n.json", b"[1, NaN, 2, 0, 1, 1, 1]", "not a finite number"),
    ("h.json", b"[1, 99999999999999999999999, 2, 0, 1, 1, 1]", "far outside"),
    ("x.json", b"[1, 2.5, 2, 0, 1, 1, 1]", "2.5, not a whole number"),
    ("deep.json", b"[" * 100000 + b"]" * 100000, "not a readable .json file"),
    ("broken.json", b"[1, 2", "not a readable .json file"),
    ("long.json", b"[" + b"9" * 4301 + b"]", "not a readable .json file of labels (an integer "
     "of more than 4,300 digits, past what Python reads)"),
    ("t.txt", b"1\n2\nthree\n", "line 3"),
    ("long.txt", b"1\n" + b"x" * 50 + b"\n", f"line 2 of {{}} is '{'x' * 40}', not a label"),
    ("bad.npy", b"not an array", "not a readable .npy file of labels (This file contains"),
    ("empty.npy", b"", "not a readable .npy file of labels (No data left in file)"),
    ("u.txt", b"\xff\xfe1\n", "not a readable .txt file"),
    ("short.json", b"[1, 2]", "holds 2 labels, but the dataset's training split has 7"),
    ("range.json", b"[0, 2, 4, 0, 1, 1, 1]", "sample 2 the label 4; labels must lie in 0..3"),
    ("big.json", b"[0, 2, 200, 0, 1, 1, 1]", "sample 2 the label 200; labels must lie"),
    ("bigf.json", b"[0, 2, 200.0, 0, 1, 1, 1]", "sample 2 the label 200; labels must lie"),
    ("exact.json", b"[0, 1152921504606846977, 1, 0, 1, 1, 1]",
     "sample 1 the label 1152921504606846977; labels"),
    ("edge.json", b"[0, 4611686018427387904, 1, 0, 1, 1, 1]", "far outside any class range"),
    ("edgef.json", b"[0, 4.611686018427388e18, 1, 0, 1, 1, 1]", "4.611686018427388e+18, not a"),
    ("neg.txt", b"1\n-1\n0\n0\n0\n0\n0\n", "sample 1 the label -1"),
])
def test_a_bad_file_is_one_line(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KdcoreError) as info:
        label_file(_ctx(), path=str(path))
    assert needle.replace("{}", str(path)) in str(info.value) and "\n" not in str(info.value)
    assert str(path) in str(info.value)  # which file


def test_the_messages_say_what_to_do(tmp_path):
    from kdcore.data.label_file import labels_file_bytes

    def message(name, content=None):
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(KdcoreError) as info:
            label_file(_ctx(), path=str(tmp_path / name))
        return str(info.value).replace(str(tmp_path / name), "FILE")

    assert message("s.json", b"[1]") == ("label_file: FILE holds 1 labels, but the dataset's "
                                         "training split has 7 samples (one label per sample, "
                                         "in the loader's order)")
    assert message("t.txt", b"1\n x \n") == ("label_file: line 2 of FILE is 'x', not a label "
                                              "(one integer per line)")
    assert message("gone.json") == "label_file: FILE does not exist"
    assert message("j.json", b"[1,") == ("label_file: FILE is not a readable .json file of "
                                         "labels (Expecting value: line 1 column 4 (char 3))")
    np.save(tmp_path / "h.npy", np.zeros(3, dtype=np.int64))
    header = (tmp_path / "h.npy").read_bytes().replace(b"(3,), ", b"(99999999999,), ")
    # a header claiming more rows than the file holds: refused before any allocation
    assert "mmap length is greater than file size" in message("h.npy", header)
    for suffix, shown in ((".pt", "'.pt'"), ("", "'nothing'")):
        with pytest.raises(KdcoreError) as info:
            labels_file_bytes(torch.tensor([1]), suffix)
        assert str(info.value) == f"a label file ends in .npy, .json, .txt, .csv, not {shown}"


def test_an_array_of_another_shape_or_kind_is_refused(tmp_path):
    np.save(tmp_path / "two.npy", np.zeros((7, 2), dtype=np.int64))
    np.save(tmp_path / "str.npy", np.array(["1"] * 7))
    for name in ("two.npy", "str.npy"):
        with pytest.raises(KdcoreError, match="expected one integer label per sample"):
            label_file(_ctx(), path=str(tmp_path / name))


def test_fuzzed_files_give_labels_or_one_error(tmp_path):
    """Seeded byte-level mutations of valid files: a label tensor or a KdcoreError, never
    another exception."""
    rng = random.Random(0)
    seeds = {s: _write(tmp_path, s).read_bytes() for s in (".npy", ".json", ".txt")}
    outcomes = set()
    for i in range(300):
        suffix = rng.choice(sorted(seeds))
        data = bytearray(seeds[suffix])
        for _ in range(rng.randint(1, 4)):
            op, at = rng.randrange(3), rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[min(at, len(data) - 1)]
            elif op == 1:
                data.insert(at, rng.randrange(256))
            elif data:
                data[min(at, len(data) - 1)] = rng.choice(b"0123456789-.,[]eE \n\x00\xff")
        path = tmp_path / f"fuzz{i}{suffix}"
        path.write_bytes(bytes(data))
        try:
            got = label_file(_ctx(), path=str(path))
        except KdcoreError as exc:
            assert "\n" not in str(exc)
            outcomes.add("refused")
        else:
            assert got.shape == (7,) and bool(((got >= 0) & (got < 4)).all())
            outcomes.add("read")
    assert outcomes == {"refused", "read"}


def _recipe(path: Path, seed: int, noise: dict) -> Path:
    """A one-stage CE recipe on 300 digits with ``noise`` (kdcore.testing's tiny recipe)."""
    from kdcore.testing import component, stage, tiny_recipe, write_recipe

    return write_recipe(tiny_recipe(stage("student", 1, ["student"], component("ce")),
                                    models={"student": {"params": {"hidden": [8]}}}, seed=seed,
                                    data={"noise": noise}), path)


@pytest.mark.slow
def test_runs_of_two_seeds_train_on_the_files_labels_by_sample_id(tmp_path):
    from sklearn.datasets import load_digits

    clean = load_digits().target
    gen = np.random.default_rng(1)
    shared = np.where(gen.random(len(clean)) < 0.3, (clean + 1) % 10, clean)
    np.save(tmp_path / "noise.npy", shared)
    for seed in (0, 1):
        recipe = _recipe(tmp_path / f"r{seed}.toml", seed, {
            "model": "label_file", "params": {"path": str(tmp_path / "noise.npy")}})
        out = tmp_path / f"run{seed}"
        run_recipe(load_recipe(recipe), out=str(out))
        with History(out) as h:
            ids = h.data("sample_id")
            assert np.array_equal(h.data("noisy_label"), shared[ids])
            assert np.array_equal(h.data("clean_label"), clean[ids])


def test_check_refuses_a_file_of_the_wrong_length(tmp_path):
    (tmp_path / "noise.json").write_text("[1, 2, 3]")
    recipe = _recipe(tmp_path / "r.toml", 0, {
        "model": "label_file", "params": {"path": str(tmp_path / "noise.json")}})
    one_line_error(invoke("check", recipe), "holds 3 labels", "has 1,797 samples")


@pytest.mark.parametrize("suffix", [".npy", ".json", ".txt", ".csv"])
def test_written_files_read_back(tmp_path, suffix):
    from kdcore.data.label_file import labels_file_bytes, read_labels

    labels = torch.tensor([9, 0, 4, 4, 1])
    path = tmp_path / f"l{suffix}"
    path.write_bytes(labels_file_bytes(labels, suffix))
    assert read_labels(str(path)).tolist() == labels.tolist()


def _pair_flip(tmp_path: Path, seed: int, to_val: bool) -> Path:
    return _recipe(tmp_path / "r.toml", seed, {"model": "pair_flip", "params": {"rate": 0.3},
                                               "apply_to_val": to_val})


@pytest.mark.parametrize("to_val", ["true", "false"])
def test_the_written_noise_rebuilds_the_runs_labels(tmp_path, to_val):
    """``kdcore noise`` then ``label_file``: the same training and validation labels as the
    recipe's own noise model, and the rows it did not corrupt keep their true labels."""
    from sklearn.datasets import load_digits

    from kdcore import PluginHost
    from kdcore.rundata import build_run_data

    recipe = _pair_flip(tmp_path, 3, to_val == "true")
    result = invoke("noise", recipe, "--out", tmp_path / "noise.json")
    assert result.exit_code == 0, result.output
    rows = 300 + (179 if to_val == "true" else 0)  # train_subset, and the validation split
    assert f"wrote 1,797 labels to {tmp_path / 'noise.json'}: {rows} rows as the run" \
        in result.output
    original = load_recipe(recipe)
    shared = load_recipe(recipe, ['data.noise={model = "label_file", params = {path = "'
                                  f'{tmp_path / "noise.json"}"}}}}'])
    a, b = (build_run_data(r.data, PluginHost(), r.run.seed, torch.device("cpu"))
            for r in (original, shared))
    assert torch.equal(a.train_noisy, b.train_noisy) and torch.equal(a.val_noisy, b.val_noisy)
    written = np.asarray(json.loads((tmp_path / "noise.json").read_text()))
    clean = load_digits().target
    ids = a.train_source.numpy()
    assert np.array_equal(written[ids], a.train_noisy.numpy())
    others = np.ones(len(written), dtype=bool)
    others[ids] = False  # validation, test: true labels but for validation's corruption
    flipped_val = int((a.val_noisy != a.val.y).sum())
    assert (written[others] != clean[others]).sum() == flipped_val
    assert (flipped_val > 0) is (to_val == "true")
    flipped = int((a.train_noisy != a.train.y).sum()) + flipped_val
    assert f"({flipped:,} differ from the true label)" in result.output


def test_noise_refuses_a_bad_output_in_one_line(tmp_path):
    recipe = _pair_flip(tmp_path, 0, True)
    one_line_error(invoke("noise", recipe, "--out", tmp_path / "noise.pt"), "not '.pt'")
    one_line_error(invoke("noise", recipe, "--out", tmp_path / "no" / "noise.npy"),
                   "cannot write")
    one_line_error(invoke("noise", recipe), "--out")
    assert not list(tmp_path.glob("noise*"))
