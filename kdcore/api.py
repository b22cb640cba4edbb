"""The researcher's API: run a recipe, run a grid, read a run's history as pandas frames.

``kdcore.run``, ``kdcore.ablate`` and ``kdcore.load_history`` (docs/api.md) are these functions;
they are the programmatic twins of ``kdcore run``, ``kdcore ablate`` and ``kdcore inspect``::

    result = kdcore.run("recipes/amlkd.toml", overrides=["run.seed=1"], out="runs/amlkd-s1")
    result.summary                          # best-validation and last-epoch accuracies
    frames = result.history()               # == kdcore.load_history(result.run_dir)
    frames.metrics                          # one row per epoch: stage, epoch, every metric

The frames (:mod:`kdcore.frames`) need pandas (``pip install 'kdcore[analysis]'``); running
does not.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from loguru import logger

from kdcore import api_args, grid
from kdcore.errors import KdcoreError
from kdcore.frames import HistoryFrames, load_history
from kdcore.recipe import (
    Recipe,
    apply_override,
    load_recipe,
    parse_override,
    read_toml,
    recipe_from_dict,
)

__all__ = ["AblateResult", "GridRun", "HistoryFrames", "RunResult", "ablate", "as_recipe",
           "load_history", "run"]

RecipeLike = str | Path | Recipe | Mapping[str, Any]
_GRID_KEYS = {"recipe", "seeds", "set", "variant"}


# -- one run ----------------------------------------------------------------------------------


@attrs.frozen
class RunResult:
    """What :func:`run` returns.

    Attributes:
        summary: best-validation and last-epoch accuracies per model role (``summary.json``).
        run_dir: the run directory (``recipe.toml``, ``history.h5``, ``summary.json``, log).
    """

    summary: dict[str, Any]
    run_dir: Path

    def history(self) -> HistoryFrames:
        """The run's history as pandas frames (:func:`load_history`)."""
        return load_history(self.run_dir)


def as_recipe(recipe: RecipeLike, overrides: Sequence[str] = ()) -> Recipe:
    """A resolved recipe from a file path, a :class:`~kdcore.recipe.Recipe` or plain recipe
    data (as :func:`kdcore.testing.tiny_recipe` makes), with ``--set`` style overrides applied.

    Raises:
        KdcoreError: an unreadable or invalid recipe, or a bad override (one line).
    """
    overrides = api_args.strings(overrides, "overrides", "['run.seed=1']")
    if isinstance(recipe, str | Path):
        return load_recipe(recipe, overrides)
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        data, source = recipe.to_dict(), recipe.source
    elif isinstance(recipe, Mapping):
        data, source = copy.deepcopy(dict(recipe)), None
    else:
        raise KdcoreError(f"a recipe is a file path, a kdcore.Recipe or a dict, not "
                          f"{type(recipe).__name__}")
    for text in overrides:
        apply_override(data, *parse_override(text))
    return recipe_from_dict(data, source=source)


def run(
    recipe: RecipeLike,
    *,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    plugins: Sequence[Any] = (),
    progress: bool = False,
) -> RunResult:
    """Run a recipe; ``kdcore run`` from Python.

    Args:
        recipe: a recipe file, a :class:`~kdcore.recipe.Recipe` or plain recipe data.
        overrides: ``key.path=value`` overrides, as ``--set`` takes them (recorded in the run).
        out: the run directory (default ``run.output_dir/run.name``).
        resume: continue the run in ``out`` from its last checkpoint.
        overwrite: replace an earlier run in ``out``.
        plugins: in-process plugin objects, besides the installed plugins (a string names
            one as ``--plugin`` does: ``"module:attr"``).
        progress: a progress bar over batches.

    Raises:
        KdcoreError: an argument of the wrong type (a lone string where a list goes), a bad
            recipe or override, an output directory that holds a run (without ``resume`` or
            ``overwrite``), or what stops the run.
    """
    from kdcore.engine import run_dir_of, run_recipe
    from kdcore.plugins import PluginHost

    overrides = api_args.strings(overrides, "overrides", "['run.seed=1']")
    flags = {name: api_args.flag(value, name) for name, value in (
        ("resume", resume), ("overwrite", overwrite), ("progress", progress))}
    extra = api_args.plugins(plugins)
    resolved = as_recipe(recipe, overrides)
    run_dir = run_dir_of(resolved, None if out is None else str(api_args.path(out, "out")))
    summary = run_recipe(resolved, out=str(run_dir), host=PluginHost(extra=extra),
                         overrides=overrides, **flags)
    return RunResult(summary=summary, run_dir=run_dir)


# -- grids ------------------------------------------------------------------------------------


@attrs.frozen
class GridRun:
    """One run of a grid: ``run_dir`` is ``out/<variant>/seed<seed>``; ``summary`` is None for
    a run that did not finish."""

    variant: str
    seed: int
    run_dir: Path
    summary: dict[str, Any] | None


@attrs.frozen
class AblateResult:
    """What :func:`ablate` returns: the counts ``kdcore ablate`` prints and every run."""

    ran: int
    skipped: int
    failed: int
    runs: list[GridRun]
    out: Path

    def summaries(self) -> dict[tuple[str, int], dict[str, Any]]:
        """``(variant, seed) -> summary`` of every finished run."""
        return {(r.variant, r.seed): r.summary for r in self.runs if r.summary is not None}


def _recipe_file(recipe: Recipe | Mapping[str, Any], out: Path) -> str:
    """A Recipe or recipe data written where a grid's runs (and subprocesses) can read it."""
    resolved = as_recipe(recipe)
    path = out / ".recipes" / f"{resolved.run.name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(resolved.to_toml())
    return str(path)


def _variant(raw: str | grid.Variant | tuple[str, Sequence[str]], recipe: str, prefix: str
             ) -> grid.Variant:
    if isinstance(raw, grid.Variant):
        return grid.Variant(prefix + raw.name, recipe, list(raw.set))
    if isinstance(raw, str):
        return grid.parse_variant(raw, recipe, prefix)
    name, sets = raw
    return grid.Variant(prefix + str(name), recipe, [str(s) for s in sets])


def _is_grid_file(item: Any) -> bool:
    if not isinstance(item, str | Path) or not Path(item).is_file():
        return False
    return bool(set(read_toml(Path(item))) <= _GRID_KEYS)


def ablate(
    recipes_or_grid: RecipeLike | grid.Variant | Sequence[RecipeLike | grid.Variant],
    *,
    seeds: Sequence[int] | None = None,
    variants: Sequence[str | grid.Variant | tuple[str, Sequence[str]]] = (),
    overrides: Sequence[str] = (),
    out: str | Path,
    jobs: int = 1,
    echo: Callable[[str], None] | None = None,
) -> AblateResult:
    """Run recipes x variants x seeds into ``out/<variant>/seed<k>/``; ``kdcore ablate`` from
    Python. Finished runs are skipped, interrupted ones resumed, a failed one counted.

    Args:
        recipes_or_grid: a grid file (``kdcore ablate --grid``: its variants and seeds), or
            one or a list of recipes (files, ``Recipe`` objects or recipe data; a recipe
            variant is named after the file's stem or ``run.name``) or
            :class:`~kdcore.grid.Variant` objects.
        seeds: the seeds of every variant (default: the grid file's, else ``(0,)``).
        variants: applied to every recipe: ``"name:key=value;key=value"`` as ``--variant``
            takes them, ``(name, [overrides])`` pairs or ``Variant`` objects (their recipe
            ignored), named ``<recipe stem>-<name>`` when there are several recipes; without
            any, each recipe is one variant.
        overrides: ``--set`` overrides of every run, applied before each variant's own.
        out: the grid directory.
        jobs: runs in parallel (separate ``kdcore run`` processes); 1 runs here, in turn.
        echo: where the progress lines go (default: the log, at INFO).

    Raises:
        KdcoreError: an argument of the wrong type, nothing to run, two variants of one
            name, a bad grid file or recipe (a run that fails is counted in ``failed``, not
            raised).
    """
    out = api_args.path(out, "out")
    seeds = api_args.seeds(seeds)
    variants = api_args.variants(variants, grid.Variant)
    overrides = api_args.strings(overrides, "overrides", "['run.seed=1']")
    jobs = api_args.count(jobs, "jobs")
    echo = api_args.callback(echo, "echo")
    items = (list(recipes_or_grid) if isinstance(recipes_or_grid, list | tuple)
             else [recipes_or_grid])
    chosen: list[grid.Variant] = []
    grid_seeds = [0]
    several = sum(not isinstance(i, grid.Variant) and not _is_grid_file(i) for i in items) > 1
    for item in items:
        if isinstance(item, grid.Variant):
            chosen.append(item)
        elif _is_grid_file(item):
            found, grid_seeds = grid.read_grid(item)
            chosen += found
        else:
            if isinstance(item, str | Path):
                recipe, stem = str(item), Path(item).stem
            else:
                recipe = _recipe_file(item, out)
                stem = Path(recipe).stem
            prefix = f"{stem}-" if several else ""  # several recipes' variants, told apart
            chosen += ([_variant(v, recipe, prefix) for v in variants] if variants
                       else [grid.Variant(stem, recipe)])
    if not chosen:
        raise KdcoreError("nothing to run: give recipes, variants or a grid file")
    if overrides:
        chosen = [grid.Variant(v.name, v.recipe, [*overrides, *v.set]) for v in chosen]
    specs = grid.plan(chosen, list(seeds) if seeds is not None else grid_seeds, out)
    from kdcore.plugins import PluginHost

    host = PluginHost()
    grid.check_specs(specs, host)  # every run's plan, and a run in the way, before any runs
    counts = grid.run_grid(specs, jobs=jobs, echo=echo or logger.info,
                           in_process=lambda spec, resume: grid.run_spec(spec, resume, host))
    runs = [GridRun(s.variant.name, s.seed, s.out, _summary(s.out)) for s in specs]
    return AblateResult(ran=counts["ran"], skipped=counts["skipped"], failed=counts["failed"],
                        runs=runs, out=out)


def _summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None
