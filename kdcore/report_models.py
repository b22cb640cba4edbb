"""What ``kdcore report`` shows of each variant, and what it warns about.

Each variant is reported with one model: the preferred role (``--model``, default ``student``)
where the variant's runs have it, else the variant's final trained model, the first role its
recipe's last stage trains (SMKD's and DML's ``peer_a``). The noise-gap recovery needs a
baseline and a ceiling variant, both in the grid, the ceiling above the baseline;
:func:`gap_warnings` says why it cannot be computed where it cannot.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from typing import Any

import attrs

from kdcore.errors import KdcoreError
from kdcore.report import RunResult, gap_references


def final_role(run: RunResult) -> str | None:
    """The role ``run`` trains last: the first role of its recipe's last training stage that
    has a summary (the recipe as ``history.h5`` stores it), else the last role of its
    ``summary.json``; None for a run without any."""
    from kdcore.history import History

    stages: list[Any] = []
    if (run.path / "history.h5").is_file():
        try:
            with History(run.path) as h:
                stages = tomllib.loads(h.recipe).get("stages", [])
        except (KdcoreError, OSError, ValueError):  # unreadable: the summary's order decides
            stages = []
    for stage in reversed(stages):
        for role in stage.get("train", []) if isinstance(stage, dict) else []:
            if role in run.summary:
                return str(role)
    return next(reversed(run.summary), None)


@attrs.frozen
class ModelChoice:
    """The model each variant is reported with (``models``, in the runs' order), the role
    asked for, and the variants that have not got it (``others``)."""

    preferred: str
    models: dict[str, str]
    others: list[str]

    def warning(self) -> str | None:
        """One line naming the variants reported with another model than the preferred."""
        if not self.others:
            return None
        which = ", ".join(f"{v}: {self.models[v]}" for v in self.others)
        return (f"no model '{self.preferred}' in {len(self.others)} variant(s); reported "
                f"with their final trained model instead ({which})")


def choose_models(runs: Sequence[RunResult], preferred: str = "student",
                  explicit: bool = False) -> ModelChoice:
    """Pick each variant's reported model (see the module's text).

    Raises:
        KdcoreError: ``explicit`` (the user named ``preferred``) and no variant has it.
    """
    by_variant: dict[str, list[RunResult]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, []).append(run)
    roles = {v: {r for run in rs for r in run.summary} for v, rs in by_variant.items()}
    if explicit and not any(preferred in rs for rs in roles.values()):
        known = sorted(set().union(*roles.values()))
        raise KdcoreError(f"no run has model '{preferred}' (models: {', '.join(known) or 'none'})")
    models: dict[str, str] = {}
    others: list[str] = []
    for variant, rs in by_variant.items():
        if preferred in roles[variant]:
            models[variant] = preferred
            continue
        role = next((r for r in map(final_role, rs) if r is not None), None)
        if role is not None:
            models[variant] = role
            others.append(variant)
    return ModelChoice(preferred, models, others)


def chosen_runs(runs: Sequence[RunResult], choice: ModelChoice) -> list[RunResult]:
    """``runs`` with each summary cut to its variant's reported model (runs without it left
    out), for :func:`~kdcore.report.aggregate` and :func:`~kdcore.figures.draw_figures`."""
    out = []
    for run in runs:
        role = choice.models.get(run.variant)
        if role in run.summary:
            out.append(attrs.evolve(run, summary={role: run.summary[role]}))
    return out


def gap_warnings(rows: Sequence[dict[str, Any]], baseline: str | None, ceiling: str | None,
                 gap_models: Sequence[str]) -> list[str]:
    """One line per reason the noise-gap recovery of ``rows`` cannot be computed: a baseline
    without a ceiling or the reverse, a reference variant not among the rows, a ceiling at or
    below the baseline, no reference row for a model. Nothing where no gap was asked for."""
    if baseline is None and ceiling is None:
        return []
    if ceiling is None or baseline is None:
        given, missing = ("baseline", "ceiling") if ceiling is None else ("ceiling", "baseline")
        return [f"no gap column: --{given} {baseline or ceiling} needs --{missing} too"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    absent = [f"{kind} '{name}'" for kind, name in (("baseline", baseline), ("ceiling", ceiling))
              if name not in variants]
    if absent:
        return [f"gap recovered is n/a: {' and '.join(absent)} not among the variants "
                f"({', '.join(variants)})"]
    out: list[str] = []
    for model in dict.fromkeys(r["model"] for r in rows if r["model"] in gap_models):
        base, top = gap_references(rows, baseline, ceiling, model)
        if base is None or top is None:
            kind, name = ("baseline", baseline) if base is None else ("ceiling", ceiling)
            line = f"gap recovered of {model} is n/a: {kind} '{name}' has no {model} row"
        elif not top["best_mean"] > base["best_mean"]:
            line = (f"gap recovered is n/a: ceiling '{ceiling}' ({_acc(top)}) is not above "
                    f"baseline '{baseline}' ({_acc(base)})")
        else:
            continue
        if line not in out:
            out.append(line)
    return out


def _acc(row: dict[str, Any]) -> str:
    return f"{row['model']}, {100 * row['best_mean']:.2f}%"
