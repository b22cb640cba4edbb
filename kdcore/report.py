"""Results tables from run directories (their summary.json; the figures, drawn from their
history.h5, are :mod:`kdcore.figures`).

Runs are grouped by variant: the directory above ``seed<k>/`` in a grid made by
``kdcore ablate``, else the run directory's own name. Every number is the mean and standard
deviation over the group's seeds of a model's test accuracy, at its best-validation epoch and at
its last epoch. A run reached through two of the paths counts once; runs of one variant must
be seeds of one recipe (their ``recipe.toml`` differ only in ``run.seed``, each seed once), or
the report stops with one line rather than average unrelated runs.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from kdcore.cli_files import output_file
from kdcore.errors import KdcoreError
from kdcore.rundir import RUN_STARTS, started

SEED_DIR = re.compile(r"seed\d+$")
METRICS = {
    "best": "test_acc_at_best_val",
    "last": "last_test_acc",
    "best_bacc": "test_bacc_at_best_val",
    "last_bacc": "last_test_bacc",
}


@attrs.frozen
class RunResult:
    """One finished run: where it is, its variant, and its summary."""

    path: Path
    variant: str
    summary: dict[str, Any]


def find_runs(paths: Iterable[str | Path]) -> list[RunResult]:
    """Every finished run (a directory with summary.json) at or below ``paths``."""
    found: list[RunResult] = []
    seen: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            raise KdcoreError(f"no such run directory: {root}")
        for s in sorted(root.rglob("summary.json"), key=lambda p: (p != root / "summary.json", p)):
            if not s.is_file():  # a pipe or a device would block the read, or never end
                raise KdcoreError(f"{s} is not a file")
            run_dir = s.parent
            if run_dir.resolve() in seen:  # reached through two of the paths: counted once
                continue
            seen.add(run_dir.resolve())
            variant = run_dir.parent.name if SEED_DIR.match(run_dir.name) else run_dir.name
            found.append(RunResult(run_dir, variant_label(variant), read_summary(s)))
    if not found:
        left = unfinished_note(paths, found)
        raise KdcoreError("no finished runs (directories with summary.json) under "
                          + ", ".join(map(str, paths)) + (f"; {left}" if left else ""))
    _check_variants(found)
    return found


def unfinished_note(paths: Iterable[str | Path], found: Sequence[RunResult]) -> str | None:
    """A line naming the runs at or below ``paths`` that were started but hold no summary.json
    (running, stopped or failed; one killed before its first epoch has no history yet, only
    its ``recipe.toml``: :func:`kdcore.rundir.started`), which the table leaves out; None when
    there are none."""
    done = {r.path.resolve() for r in found}
    left = sorted({f.parent for root in map(Path, paths) for name in RUN_STARTS
                   for f in Path(root).rglob(name)
                   if f.parent.resolve() not in done and started(f.parent)})
    if not left:
        return None
    named = ", ".join(map(str, left[:5])) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return (f"{len(left)} unfinished run{'s' * (len(left) != 1)} left out (started, no "
            f"summary.json: running, stopped or failed): {named}")


def mixed_datasets(runs: Sequence[RunResult]) -> str | None:
    """A line when the variants were trained and tested on different datasets (``data.dataset``
    of their saved recipes), naming each dataset's variants; None when they share one. Rows of
    two datasets read as one comparison otherwise (their test splits differ)."""
    by_dataset: dict[str, list[str]] = {}
    for run in runs:
        data = (_saved_recipe(run.path) or {}).get("data")  # a hand-edited file: anything
        dataset = data.get("dataset") if isinstance(data, dict) else None
        if isinstance(dataset, str):
            variants = by_dataset.setdefault(dataset, [])
            if run.variant not in variants:
                variants.append(run.variant)
    if len(by_dataset) < 2:
        return None
    named = "; ".join(f"'{dataset}': {', '.join(variants[:3])}"
                      f"{f' and {len(variants) - 3} more' if len(variants) > 3 else ''}"
                      for dataset, variants in by_dataset.items())
    return (f"the variants use {len(by_dataset)} datasets ({named}); rows of different "
            "datasets are tested on different test splits and do not compare")


def mixed_noise(runs: Sequence[RunResult], baseline: str | None,
                ceiling: str | None) -> str | None:
    """A line when a variant's label noise (``data.noise`` of its saved recipe) is not the
    baseline's, naming those variants; None when the gap is not asked for or every variant
    shares it. The gap recovered measures a variant against CE on the same noisy labels: one
    against another noise's baseline reads as a method's merit what is the noise's. The
    ceiling, trained on clean labels, is left out."""
    if baseline is None or ceiling is None:
        return None
    noises: dict[str, str] = {}
    for run in runs:
        data = (_saved_recipe(run.path) or {}).get("data")
        if isinstance(data, dict) and run.variant not in noises:
            noises[run.variant] = _noise_words(data.get("noise"))
    base = noises.get(baseline)
    other = [f"{v} ({n})" for v, n in noises.items() if v not in (baseline, ceiling) and
             base is not None and n != base]
    if not other:
        return None
    return (f"the gap recovered compares variants trained on other label noise than the "
            f"baseline '{baseline}' ({base}): {', '.join(other[:3])}"
            f"{f' and {len(other) - 3} more' if len(other) > 3 else ''}; their gap is measured "
            "against another noise's baseline")


def _noise_words(noise: Any) -> str:
    """A saved recipe's ``data.noise`` as ``model key=value ...`` (params sorted), leaving out
    a built-in model's parameters written with their default value: ``include_true = false``
    spelt out is the same noise as left out."""
    if not isinstance(noise, dict):
        return "none"
    model = str(noise.get("model", "none"))
    params = noise.get("params") if isinstance(noise.get("params"), dict) else {}
    defaults = _noise_defaults(model)
    return " ".join([model, *(f"{k}={params[k]}" for k in sorted(params)
                              if k not in defaults or not _same_value(params[k], defaults[k]))])


def _noise_defaults(model: str) -> dict[str, Any]:
    """The keyword parameters of built-in noise model ``model`` that have defaults (none for a
    plugin's model: its text is compared as written)."""
    import inspect

    from kdcore.data.noise import NOISE_MODELS

    fn = NOISE_MODELS.get(model)
    if fn is None:
        return {}
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def _same_value(value: Any, default: Any) -> bool:
    """``value`` as a recipe wrote it equals ``default``, of the same type (``1`` is not
    ``True``)."""
    return type(value) is type(default) and value == default


def variant_label(name: str) -> str:
    """A folder's name as a variant's label: a byte that is not UTF-8 (a lone surrogate, as
    Python reads it from a file system or a command line) as its escape, so that every table,
    file and figure can write it, and ``--baseline`` typed with the same byte names it."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def read_summary(path: Path) -> dict[str, Any]:
    """A run's summary.json: per model role, the accuracies :data:`METRICS` names (numbers, or
    null without a validation split); anything else is one line naming the file (a
    summary.json of another program, found under a folder given to ``report``, failed deep
    in the table as "'int' object is not subscriptable")."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep
        raise KdcoreError(f"{path}: not a kdcore run summary ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:120]})") from None
    if not isinstance(summary, dict) or not summary:
        raise KdcoreError(f"{path}: not a kdcore run summary (expected an object of model "
                          "roles)")
    for role, entry in summary.items():
        bad = _summary_fault(entry)
        if bad:
            raise KdcoreError(f"{path}: not a kdcore run summary (model '{role}': {bad})")
    return summary


def _summary_fault(entry: Any) -> str | None:
    """What is wrong with one model's entry of a summary, or None."""
    if not isinstance(entry, dict):
        return "not an object"
    for key in METRICS.values():
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"'{key}' is not a number"
    return next((f"no '{key}'" for key in METRICS.values() if key not in entry), None)


def _check_variants(runs: Sequence[RunResult]) -> None:
    """The runs of one variant are its seeds: the same recipe but for ``run.seed``, each seed
    once. Runs that share only a folder name (two grids' ``ce``, ``seed1`` and ``seed2`` of
    two recipes) would otherwise be averaged as one."""
    from kdcore.checkpointing import differing_keys
    from kdcore.recipe.rules import RESUMABLE_CHANGES

    first: dict[str, tuple[RunResult, dict[str, Any]]] = {}
    seeds: dict[tuple[str, Any], Path] = {}
    for run in runs:
        recipe = _saved_recipe(run.path)
        if recipe is None:  # nothing to compare (a run of an older layout): taken as it is
            continue
        seed = recipe.get("run", {}).get("seed")
        if (run.variant, seed) in seeds:
            raise KdcoreError(f"{seeds[(run.variant, seed)]} and {run.path} are both seed "
                              f"{seed} of variant '{run.variant}'; report them apart")
        seeds[(run.variant, seed)] = run.path
        if run.variant not in first:
            first[run.variant] = (run, recipe)
            continue
        other, base = first[run.variant]
        differ = [k for k in differing_keys(base, recipe)
                  if k != "run.seed" and not k.startswith(RESUMABLE_CHANGES)]
        if differ:
            raise KdcoreError(
                f"{other.path} and {run.path} would be averaged as variant '{run.variant}', "
                f"but their recipes differ at {', '.join(differ[:5])}; report them apart")


def _saved_recipe(run_dir: Path) -> dict[str, Any] | None:
    import tomllib

    from kdcore.recipe import resolved_now

    try:
        saved = tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return resolved_now(saved)  # a seed run by an older kdcore lacks keys added since


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and v == v]  # None: no validation split
    if not vals:
        return float("nan"), float("nan")
    # one seed has no spread: NaN, shown as none rather than as a measured 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else float("nan")


def aggregate(runs: Sequence[RunResult], roles: Sequence[str] | None = None
              ) -> list[dict[str, Any]]:
    """One row per (variant, model role): seed count and mean/std of each metric."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    order: list[tuple[str, str]] = []
    for run in runs:
        for role, s in run.summary.items():
            if roles and role not in roles:
                continue
            key = (run.variant, role)
            if key not in groups:
                order.append(key)
            groups[key].append(s)
    rows = []
    for variant, role in order:
        items = groups[(variant, role)]
        row: dict[str, Any] = {"variant": variant, "model": role, "seeds": len(items)}
        for short, key in METRICS.items():
            row[f"{short}_mean"], row[f"{short}_std"] = _mean_std([i[key] for i in items])
        rows.append(row)
    return rows


def _pct(mean: float, std: float) -> str:
    if mean != mean:
        return "-"
    return f"{100 * mean:.2f}" if std != std else f"{100 * mean:.2f} ± {100 * std:.2f}"


def gap_references(rows: Sequence[dict[str, Any]], baseline: str, ceiling: str, model: str
                   ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The baseline's and the ceiling's rows for ``model``'s gap: those variants' rows of the
    same model or, where a variant has one row only (the CE student against a mutual-learning
    method's peer), that row; None where there is neither."""
    def reference(variant: str) -> dict[str, Any] | None:
        mine = [r for r in rows if r["variant"] == variant]
        same = [r for r in mine if r["model"] == model]
        return same[0] if same else mine[0] if len(mine) == 1 else None

    return reference(baseline), reference(ceiling)


def gap_recovery(rows: Sequence[dict[str, Any]], baseline: str, ceiling: str,
                 gap_models: Sequence[str] = ("student",)) -> dict[tuple[str, str], float]:
    """The noise-gap recovery ``(acc - acc_baseline) / (acc_ceiling - acc_baseline)`` (best
    epoch) of each ``(variant, model)`` row whose model is one of ``gap_models``, against the
    rows :func:`gap_references` picks.

    Rows without both references, or whose ceiling is not above their baseline (the gap is then
    undefined), are left out.
    """
    gaps: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["model"] not in gap_models:  # the gap is the student's: other roles get none
            continue
        base, top = gap_references(rows, baseline, ceiling, r["model"])
        if base and top and top["best_mean"] > base["best_mean"]:
            gaps[(r["variant"], r["model"])] = (
                (r["best_mean"] - base["best_mean"]) / (top["best_mean"] - base["best_mean"]))
    return gaps


def table_cells(rows: Sequence[dict[str, Any]], *, baseline: str | None = None,
                ceiling: str | None = None, gap_models: Sequence[str] = ("student",)
                ) -> tuple[list[str], list[list[str]]]:
    """The header and cells of the results table (:func:`markdown_table`, the HTML page)."""
    header = ["variant", "model", "seeds", "test acc, best val (%)", "test acc, last (%)",
              "balanced acc, best val (%)"]
    gaps = None
    if baseline is not None and ceiling is not None:
        gaps = gap_recovery(rows, baseline, ceiling, gap_models)
        header.append("gap recovered")
    body = []
    for r in rows:
        cells = [r["variant"], r["model"], str(r["seeds"]), _pct(r["best_mean"], r["best_std"]),
                 _pct(r["last_mean"], r["last_std"]),
                 _pct(r["best_bacc_mean"], r["best_bacc_std"])]
        if gaps is not None:
            gap = gaps.get((r["variant"], r["model"]))
            cells.append("-" if r["model"] not in gap_models
                         else "n/a" if gap is None else f"{gap:+.2f}")
        body.append(cells)
    return header, body


def markdown_table(rows: Sequence[dict[str, Any]], *, baseline: str | None = None,
                   ceiling: str | None = None,
                   gap_models: Sequence[str] = ("student",)) -> str:
    """A Markdown table of ``rows``; with ``baseline`` and ``ceiling`` variants, a column of
    the noise-gap recovery (:func:`gap_recovery`) for the rows whose model is one of
    ``gap_models`` ("n/a" where it is undefined, "-" for the other rows)."""
    header, body = table_cells(rows, baseline=baseline, ceiling=ceiling, gap_models=gap_models)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_md_cell, cells)) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    """A cell that stays one cell: ``|`` escaped, line breaks and other control characters
    (a folder's name can hold any) as spaces."""
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text).replace("|", "\\|")


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """``rows`` as CSV: floats with 6 decimals, None and NaN (no value, no spread of one
    seed) as an empty cell."""
    with output_file(path, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v))
                                 else f"{v:.6f}" if isinstance(v, float) else v)
                             for k, v in r.items()})
