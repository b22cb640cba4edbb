"""The helpers every one-line message goes through, against hand-written expected text."""

from __future__ import annotations

import errno
import signal

import pytest

from kdcore.errors import (
    KdcoreError,
    RecipeError,
    Stopped,
    did_you_mean,
    exception_text,
    long_integer,
    missing_path,
    one_line,
    os_reason,
    printable,
    shown,
    weights_only_reason,
)


def test_a_recipe_error_names_its_file_and_key_where_known():
    assert str(RecipeError("must be > 0", file="r.toml", key="data.batch_size")) == (
        "r.toml: data.batch_size: must be > 0")
    assert str(RecipeError("must be > 0", key="data.batch_size")) == "data.batch_size: must be > 0"
    assert str(RecipeError("must be > 0", file="r.toml")) == "r.toml: must be > 0"
    assert str(RecipeError("must be > 0")) == "must be > 0"
    placed = RecipeError("bad", key="run.seed").at(file="base.toml", key="other.key")
    assert (placed.file, placed.key, placed.detail) == ("base.toml", "run.seed", "bad")
    assert str(placed) == "base.toml: run.seed: bad" and isinstance(placed, KdcoreError)
    kept = RecipeError("bad", file="a.toml").at(file="b.toml")
    assert str(kept) == "a.toml: bad"


def test_a_refused_value_is_shown_with_its_type_and_cut_at_60_characters():
    assert shown(5) == "int 5" and shown([1, 2]) == "list [1, 2]"
    text = "x" * 58  # its repr, quotes included, is 60 characters: shown whole
    assert shown(text) == f"str '{text}'"
    longer = "y" * 59
    assert shown(longer) == "str " + repr(longer)[:57] + "..."


def test_did_you_mean_offers_the_closest_name_or_nothing():
    assert did_you_mean("symetric", ["pair_flip", "symmetric", "asymmetric"]) == (
        " (did you mean 'symmetric'?)")
    assert did_you_mean("zzz", ["symmetric", "pair_flip"]) == ""
    assert did_you_mean("abcd", ["abxy"]) == ""  # half the letters: below the 0.6 cutoff
    assert did_you_mean("abcde", ["abcxy"]) == " (did you mean 'abcxy'?)"  # exactly 0.6


def test_os_reason_gives_the_systems_words():
    assert os_reason(OSError(errno.ENOSPC, "HDF5 page of context")) == "No space left on device"
    assert os_reason(OSError("no errno\nmore")) == "no errno"
    assert os_reason(OSError(0, "zero")) == "[Errno 0] zero"
    assert os_reason(RuntimeError("  first  \nsecond")) == "first"


def test_printable_escapes_what_a_terminal_would_not_show():
    assert printable("plain text, é and 中") == "plain text, é and 中"
    assert printable("a\nb\r\tc\x1b[31m\u2028\udcff") == "a\\nb\\r\\tc\\x1b[31m\\u2028\\udcff"
    assert printable("é 中\n") == "é 中\\n"  # only what is not shown is escaped


def test_one_line_is_the_first_line_with_white_space_folded():
    assert one_line(ValueError("\n   \n  first   of\tmany  \nsecond")) == "first of many"
    assert one_line(ValueError()) == "ValueError"
    assert one_line("") == "" and one_line("  text  ") == "text"


class Unsayable(Exception):
    """A plugin's exception whose message reads an attribute its ``__init__`` never set."""

    def __str__(self):
        return self.detail

    __repr__ = __str__


def test_an_exception_that_cannot_say_itself_is_named_by_what_it_raised():
    assert exception_text(ValueError("v")) == "v"
    assert exception_text(ValueError("v"), quoted=True) == "ValueError('v')"
    assert exception_text(Unsayable()) == "<its message raised AttributeError>"
    assert exception_text(Unsayable(), quoted=True) == (
        "Unsayable(<its message raised AttributeError>)")
    assert one_line(Unsayable()) == "<its message raised AttributeError>"


@pytest.mark.parametrize(("text", "reason"), [
    ("Weights only load failed. WeightsUnpickler error: Unsupported global: x. Use y.",
     "Unsupported global: x"),
    # the marker with nothing after it: the advice paragraph, then the reason
    ("Weights only load failed. Advice.\n\nThe reason. More. WeightsUnpickler error:",
     "The reason"),
    ("Something else first.\n\nSecond paragraph.", "Something else first."),
    ("Weights only load failed. Advice only.", "Weights only load failed. Advice only."),
    ("PytorchStreamReader failed reading zip archive: failed finding central directory. This "
     "is an internal miniz error. If you are seeing this error, there is a high likelihood...",
     "PytorchStreamReader failed reading zip archive: failed finding central directory."),
])
def test_the_reason_a_weights_only_load_failed(text, reason):
    assert weights_only_reason(RuntimeError(text)) == reason


@pytest.mark.parametrize(("signum", "name"), [(signal.SIGTERM, "SIGTERM"), (1, "SIGHUP")])
def test_a_stopping_signal_is_an_interrupt_named_by_its_signal(signum, name):
    stopped = Stopped(signum)
    assert (str(stopped), stopped.signum) == (name, signum)
    # an interrupt, so that the run stops as on Ctrl-C; no Exception, which isolation catches
    assert isinstance(stopped, KeyboardInterrupt) and not isinstance(stopped, Exception)


def test_a_missing_relative_path_is_shown_with_the_directory_it_was_looked_for_from(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    want = f"data/x.npz (relative to the working directory {tmp_path})"
    assert missing_path("data/x.npz") == want
    assert missing_path(tmp_path / "x.npz") == str(tmp_path / "x.npz")  # absolute: as it is
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # the working directory itself removed: the path as given
    assert missing_path("x.npz") == "x.npz"


RELATIVE = "../elsewhere/missing"


@pytest.mark.parametrize(("overrides", "said"), [
    (['data={dataset="npz", params={path="%s.npz"}}'], "npz: %s.npz{} does not exist"),
    (['data={dataset="image_folder", params={root="%s"}}'], "image_folder: %s{} is not a "
     "directory"),
    (['data={dataset="fashion_mnist", params={root="%s"}}'], "Fashion-MNIST directory %s{} "
     "(from data.params.root) does not exist"),
    (['data={dataset="cifar10", params={root="%s"}}'], "CIFAR-10 not found: %s{} does not exist"),
    (['data={dataset="image_list", params={root=".", train_list="%s.txt"}}'],
     "image_list: %s.txt{} does not exist"),
    (['data.noise={model="label_file", params={path="%s.npy"}}'], "label_file: %s.npy{} does "
     "not exist"),
    (['models.student.checkpoint="%s.pt"'], "checkpoint for model 'student' not found: %s.pt{}"),
])
def test_check_says_where_a_relative_path_was_looked_for(tmp_path, monkeypatch, overrides,
                                                         said):
    """A recipe's paths are read from the working directory, its ``extends`` from the recipe's
    folder: a path not found says which directory it was taken from."""
    from pathlib import Path

    from click.testing import CliRunner

    from kdcore.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).parents[1] / "recipes" / "ce.toml"
    args = ["check", str(recipe)] + [a for o in overrides for a in ("--set", o % RELATIVE)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    where = f" (relative to the working directory {tmp_path})"
    assert (said % RELATIVE).format(where) in result.output.strip().splitlines()[-1]


def test_ints_refusal_of_a_decimal_too_long_is_told_apart():
    with pytest.raises(ValueError) as info:
        int("9" * 4301)
    assert long_integer(info.value)
    assert not long_integer(ValueError("invalid literal for int() with base 10: 'x'"))
    assert not long_integer(RuntimeError(str(info.value)))  # int()'s is a ValueError
