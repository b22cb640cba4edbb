"""The report table's arithmetic on hand-built rows: mean and spread over seeds, which rows a
gap is measured against, the gap itself, the cells and the warnings' words (the first run of
``benchmarks/mutants.py kdcore-report`` found them tested only through whole grids)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from kdcore.report import (
    RunResult,
    _md_cell,
    aggregate,
    gap_recovery,
    gap_references,
    markdown_table,
    table_cells,
    write_csv,
)
from kdcore.report_models import gap_warnings


def _run(variant: str, seed: int, **summaries: dict[str, float | None]) -> RunResult:
    return RunResult(path=Path(f"{variant}/seed{seed}"), variant=variant,
                     summary={role: {"test_acc_at_best_val": s.get("best"),
                                     "last_test_acc": s.get("last", 0.5),
                                     "test_bacc_at_best_val": s.get("bacc", 0.5),
                                     "last_test_bacc": 0.5}
                              for role, s in summaries.items()})


def test_aggregate_means_and_spreads_over_seeds_skipping_unknown_values():
    runs = [_run("kd", 0, student={"best": 0.80}, teacher={"best": 0.9}),
            _run("kd", 1, student={"best": 0.84}, teacher={"best": 0.9}),
            _run("kd", 2, student={"best": None}, teacher={"best": 0.9}),  # no validation split
            _run("kd", 3, student={"best": math.nan}, teacher={"best": 0.9})]
    rows = aggregate(runs, roles=["student"])
    assert [(r["variant"], r["model"], r["seeds"]) for r in rows] == [("kd", "student", 4)]
    assert rows[0]["best_mean"] == pytest.approx(0.82)
    assert rows[0]["best_std"] == pytest.approx(statistics.stdev([0.80, 0.84]))
    one = aggregate([_run("ce", 0, student={"best": 0.7})])[0]
    assert one["best_mean"] == 0.7 and math.isnan(one["best_std"])  # one seed: no spread
    none = aggregate([_run("ce", 0, student={"best": None})])[0]
    assert math.isnan(none["best_mean"]) and math.isnan(none["best_std"])
    both = aggregate(runs)
    assert [r["model"] for r in both] == ["student", "teacher"]


def _row(variant: str, model: str, best: float) -> dict:
    return {"variant": variant, "model": model, "seeds": 3, "best_mean": best, "best_std": 0.01,
            "last_mean": best, "last_std": math.nan, "best_bacc_mean": math.nan,
            "best_bacc_std": math.nan}


ROWS = [_row("ce", "student", 0.60), _row("ce-clean", "student", 0.90),
        _row("dml", "student", 0.75), _row("dml", "peer", 0.70),
        _row("kd", "teacher", 0.95), _row("kd", "student", 0.81)]


def test_gap_references_prefer_the_same_model_then_a_lone_row():
    base, top = gap_references(ROWS, "ce", "ce-clean", "peer")  # ce has only a student row
    assert base["model"] == "student" and top["best_mean"] == 0.90
    base, top = gap_references(ROWS, "kd", "ce-clean", "student")
    assert base["best_mean"] == 0.81  # kd's student, not its teacher
    assert gap_references(ROWS, "kd", "ce-clean", "peer")[0] is None  # two rows, no peer


def test_gap_recovery_and_its_cells():
    gaps = gap_recovery(ROWS, "ce", "ce-clean", gap_models=("student", "peer"))
    assert gaps[("dml", "student")] == pytest.approx((0.75 - 0.60) / (0.90 - 0.60))
    assert gaps[("dml", "peer")] == pytest.approx((0.70 - 0.60) / 0.30)
    assert ("kd", "teacher") not in gaps
    header, body = table_cells(ROWS, baseline="ce", ceiling="ce-clean")
    assert header == ["variant", "model", "seeds", "test acc, best val (%)",
                      "test acc, last (%)", "balanced acc, best val (%)", "gap recovered"]
    assert body[2] == ["dml", "student", "3", "75.00 ± 1.00", "75.00", "-", "+0.50"]
    assert body[3][-1] == "-" and body[4][-1] == "-"  # not a gap model
    _, plain = table_cells(ROWS)
    assert len(plain[0]) == 6


def test_gap_warnings_in_words():
    assert gap_warnings(ROWS, None, None, ("student",)) == []
    assert gap_warnings(ROWS, "ce", None, ("student",)) == [
        "no gap column: --baseline ce needs --ceiling too"]
    assert gap_warnings(ROWS, None, "ce-clean", ("student",)) == [
        "no gap column: --ceiling ce-clean needs --baseline too"]
    assert gap_warnings(ROWS, "x", "y", ("student",)) == [
        "gap recovered is n/a: baseline 'x' and ceiling 'y' not among the variants (ce, "
        "ce-clean, dml, kd)"]
    lines = gap_warnings(ROWS, "kd", "dml", ("student", "peer", "teacher"))
    assert lines == ["gap recovered is n/a: ceiling 'dml' (student, 75.00%) is not above "
                     "baseline 'kd' (student, 81.00%)",
                     "gap recovered of peer is n/a: baseline 'kd' has no peer row",
                     "gap recovered of teacher is n/a: ceiling 'dml' has no teacher row"]


def test_filters_and_references_that_depend_on_the_model():
    # a role filtered out before the one kept: the kept one is still read
    rows = aggregate([_run("kd", 0, teacher={"best": 0.9}, student={"best": 0.8})],
                     roles=["student"])
    assert [(r["model"], r["best_mean"]) for r in rows] == [("student", 0.8)]
    # a baseline and a ceiling of two rows each: the reference is the same model's row
    gaps = gap_recovery(ROWS, "dml", "kd")
    assert gaps[("ce", "student")] == pytest.approx((0.60 - 0.75) / (0.81 - 0.75))
    # every model's problem is reported, after a model whose gap is fine
    assert gap_warnings(ROWS, "dml", "kd", ("student", "peer", "teacher")) == [
        "gap recovered of peer is n/a: ceiling 'kd' has no peer row",
        "gap recovered of teacher is n/a: baseline 'dml' has no teacher row"]


def test_markdown_table_text():
    assert markdown_table([_row("ce", "student", 0.60)]) == (
        "| variant | model | seeds | test acc, best val (%) | test acc, last (%) | "
        "balanced acc, best val (%) |\n"
        "|---|---|---|---|---|---|\n"
        "| ce | student | 3 | 60.00 ± 1.00 | 60.00 | - |\n")


def test_markdown_cells_blank_control_characters_only():
    # C0 controls, tab and DEL become spaces; a C1 character (U+0080) and text stay
    assert _md_cell("a\x00b\tc\x1fd\x7fe\x80f g|h") == "a b c d e\x80f g\\|h"


def test_csv_of_one_row(tmp_path):
    row = {"variant": "ce", "model": "student", "seeds": 2, "best_mean": 0.5,
           "best_std": math.nan, "gap": None, "last_mean": 1 / 3}
    write_csv([row], tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_bytes() == (
        b"variant,model,seeds,best_mean,best_std,gap,last_mean\r\n"
        b"ce,student,2,0.500000,,,0.333333\r\n")


def _saved(tmp_path: Path, variant: str, seed: int, dataset: str | None,
           recipe: str | None = None) -> RunResult:
    run = _run(variant, seed, student={"best": 0.5})
    path = tmp_path / variant / f"seed{seed}"
    path.mkdir(parents=True)
    if dataset is not None:
        recipe = f'[data]\ndataset = "{dataset}"\n'
    if recipe is not None:
        path.joinpath("recipe.toml").write_text(recipe)
    return RunResult(path=path, variant=variant, summary=run.summary)


def test_variants_of_different_datasets_are_named_by_dataset(tmp_path):
    from kdcore.report import mixed_datasets

    same = [_saved(tmp_path, "ce", 0, "digits"), _saved(tmp_path, "ce", 1, "digits"),
            _saved(tmp_path, "kd", 0, "digits"), _saved(tmp_path, "old", 0, None),
            _saved(tmp_path, "bare", 0, None, "[run]\nseed = 1\n"),
            _saved(tmp_path, "odd", 0, None, "data = 5\n")]
    # one dataset; a run without recipe.toml, or with no data table, is not counted
    assert mixed_datasets(same) is None
    mixed = same + [_saved(tmp_path, f"f{i}", 0, "fashion_mnist") for i in range(5)]
    assert mixed_datasets(mixed) == (
        "the variants use 2 datasets ('digits': ce, kd; 'fashion_mnist': f0, f1, f2 and 2 "
        "more); rows of different datasets are tested on different test splits and do not "
        "compare")
    for count, more in ((3, ""), (4, " and 1 more")):
        variants = [_saved(tmp_path / f"{count}", f"v{i}", 0, "npz") for i in range(count)]
        assert mixed_datasets(same + variants) == (
            f"the variants use 2 datasets ('digits': ce, kd; 'npz': v0, v1, v2{more}); rows of "
            "different datasets are tested on different test splits and do not compare")
    three = same + [_saved(tmp_path, "n", 0, "npz"), _saved(tmp_path, "m", 0, "mnist")]
    assert mixed_datasets(three).startswith(
        "the variants use 3 datasets ('digits': ce, kd; 'npz': n; 'mnist': m);")


def test_a_variant_on_other_noise_than_the_baseline_is_named_when_the_gap_is_asked(tmp_path):
    from kdcore.report import mixed_noise

    def noisy(variant, noise, seed=0):
        return _saved(tmp_path, variant, seed, None, f"[data]\ndataset = \"digits\"\n{noise}")

    sym = '[data.noise]\nmodel = "symmetric"\nparams = { rate = 0.4 }\n'
    runs = [noisy("ce", sym), noisy("ce", sym, 1), noisy("kd", sym),
            noisy("clean", '[data.noise]\nmodel = "none"\n'),
            _saved(tmp_path, "old", 0, None)]  # no recipe: nothing to compare
    assert mixed_noise(runs, "ce", "clean") is None  # the ceiling's clean labels are its own
    assert mixed_noise(runs, None, None) is None
    others = [noisy("pair", '[data.noise]\nmodel = "pair_flip"\nparams = { rate = 0.4 }\n'),
              noisy("sym2", '[data.noise]\nmodel = "symmetric"\nparams = { rate = 0.2 }\n'),
              noisy("wide", '[data.noise]\nmodel = "symmetric"\n'
                            'params = { rate = 0.4, include_true = true }\n'),
              noisy("bare", "")]
    assert mixed_noise(runs + others, "ce", "clean") == (
        "the gap recovered compares variants trained on other label noise than the baseline "
        "'ce' (symmetric rate=0.4): pair (pair_flip rate=0.4), sym2 (symmetric rate=0.2), wide "
        "(symmetric include_true=True rate=0.4) and 1 more; their gap is measured against "
        "another noise's baseline")
    assert mixed_noise(runs[:3] + others[:1], "ce", "pair") is None  # pair: the ceiling here
    assert mixed_noise(runs + others, "ce", None) is None  # no gap without a ceiling
    assert mixed_noise(runs + others[1:], "ce", "clean").endswith(
        ": sym2 (symmetric rate=0.2), wide (symmetric include_true=True rate=0.4), bare (none); "
        "their gap is measured against another noise's baseline")  # three: all named
    assert mixed_noise(runs + others[:1], "missing", "clean") is None  # no baseline to match


def test_a_built_in_noise_parameter_spelt_out_at_its_default_is_the_same_noise(tmp_path):
    from kdcore.report import mixed_noise

    def noisy(variant, params, model="symmetric"):
        return _saved(tmp_path / model, variant, 0, None,
                      f'[data]\ndataset = "digits"\n[data.noise]\nmodel = "{model}"\n'
                      f'params = {params}\n')

    runs = [noisy("ce", "{ rate = 0.4 }"), noisy("clean", "{}", "none"),
            noisy("spelt", "{ rate = 0.4, include_true = false }")]
    assert mixed_noise(runs, "ce", "clean") is None  # False is symmetric's default
    wider = noisy("wider", "{ rate = 0.4, include_true = true }")
    assert "wider (symmetric include_true=True rate=0.4)" in mixed_noise(runs + [wider], "ce",
                                                                         "clean")
    # a value of another type than the default is named (as written), and so is another rate
    for name, params in (("typed", "{ rate = 0.4, include_true = 0 }"),
                         ("rate", "{ rate = 0.3, include_true = false }")):
        line = mixed_noise(runs + [noisy(name, params)], "ce", "clean")
        assert line is not None and f"{name} (symmetric " in line, name
    # instance_dependent's std defaults to 0.1; a plugin's model is compared as written
    idn = [noisy("ce", "{ rate = 0.2 }", "instance_dependent"), runs[1],
           noisy("std", "{ rate = 0.2, std = 0.1 }", "instance_dependent")]
    assert mixed_noise(idn, "ce", "clean") is None
    plugin = [noisy("ce", "{ rate = 0.2 }", "mine"), runs[1],
              noisy("mine", "{ rate = 0.2, include_true = false }", "mine")]
    assert "mine (mine include_true=False rate=0.2)" in mixed_noise(plugin, "ce", "clean")
