"""Which recipe and which code made a run: the recipe's keys that differ from another's, and a
digest of the Python sources of kdcore and of each plugin distribution the recipe uses,
recorded in the run's history (``History.setup["code"]``).

Versions alone cannot tell: a plugin edited in place (an editable install, a research
branch) keeps its version. A grid that skips its finished runs, a run resumed after an edit
and a report that averages seeds would otherwise mix numbers made by different code without
a word; with the digests each says so (they warn: an edit may change nothing that is
computed, and only the user knows).
"""

from __future__ import annotations

import functools
import hashlib
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdcore.plugins import PluginHost
    from kdcore.recipe import Recipe


def _package_digest(module: str) -> str:
    """The first 12 hex digits of the SHA-256 of the sources of ``module``'s top-level
    package (every ``*.py`` below its folder, each by its relative path and bytes; a
    top-level module alone: its file; empty where there is none to read: a namespace
    package, a module not imported under its name, a file that cannot be read). Computed once
    per process: the code a process runs is the code it imported, whatever is edited on disk
    later. A digest never stops a run."""
    top = sys.modules.get(module.partition(".")[0])
    if top is None or getattr(top, "__file__", None) is None:
        return ""
    path = Path(top.__file__)
    files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
    h = hashlib.sha256()
    try:
        for f in files:
            h.update(f.relative_to(path.parent).as_posix().encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    except OSError:
        return ""
    return h.hexdigest()[:12]


package_digest = functools.cache(_package_digest)


def _used_names(recipe: Recipe) -> dict[str, set[str]]:
    """Per registry, the names ``recipe`` takes from it."""
    return {
        "components": {c.use for s in recipe.stages for c in s.components if c.enabled},
        "datasets": {recipe.data.dataset},
        "noise_models": {recipe.data.noise.model},
        "models": {m.arch for m in recipe.models.values() if m.enabled},
        "augmentations": {a.name for a in recipe.data.augment},
        "loggers": set(recipe.run.loggers),
    }


def code_digests(recipe: Recipe, host: PluginHost) -> dict[str, str]:
    """The digest of kdcore and of each installed plugin distribution that ``recipe`` uses
    (one of its registry entries, or an observer hook, which runs in every run), by
    distribution name. Plugins given with ``--plugin`` are left out, as in the versions."""
    from kdcore.plugins import IN_PROCESS, REGISTRY_HOOKS

    # hooks that only check a recipe or fill a registry; a plugin with others (observers)
    # has code that runs during every run
    set_up_hooks = {"kdcore_configure", *REGISTRY_HOOKS.values()}
    used = _used_names(recipe)
    out = {"kdcore": package_digest("kdcore")}
    for info in host.infos.values():
        if info.error is not None or info.distribution == IN_PROCESS:
            continue
        provides = any(used[kind] & set(names) for kind, names in info.provides.items())
        if provides or set(info.hooks) - set_up_hooks:
            plugin = host.pm.get_plugin(info.name)
            module = plugin.__name__ if isinstance(plugin, types.ModuleType) else (
                type(plugin).__module__)
            out[info.distribution] = package_digest(module)
    return out


def code_changes(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The distributions whose digest differs between ``recorded`` (a run's) and
    ``current``, sorted; one known to only one side counts (a plugin the recipe now takes
    from another package), a run that recorded nothing (made before kdcore did) none."""
    if not recorded:
        return []
    return sorted(d for d in {*recorded, *current} if recorded.get(d) != current.get(d))


def recipe_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """The keys at which two resolved recipes (``Recipe.to_dict()``) differ in what a run
    computes (not :data:`~kdcore.recipe.rules.RESUMABLE_CHANGES`), as a short list; empty
    when none do."""
    from kdcore.checkpointing import differing_keys
    from kdcore.recipe.rules import RESUMABLE_CHANGES

    differ = [k for k in differing_keys(saved, now) if not k.startswith(RESUMABLE_CHANGES)]
    return ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")


def check_same_recipe(run_dir: Path, finished: bool, recipe: Recipe) -> None:
    """A run already in ``run_dir`` (``finished``, so a grid skips it; or interrupted, so it
    resumes) must have been started with ``recipe``: else its numbers would stand in a
    report for a configuration they were not measured on.

    Raises:
        KdcoreError: its ``recipe.toml`` differs, or cannot be read.
    """
    import tomllib

    from kdcore.errors import KdcoreError
    from kdcore.recipe import recipe_from_dict

    saved = run_dir / "recipe.toml"
    if not saved.is_file():
        return
    again = f"remove {run_dir} to run it again, or give the grid another --out"
    try:
        old = recipe_from_dict(tomllib.loads(saved.read_text(encoding="utf-8")))
    except (OSError, ValueError, KdcoreError):
        raise KdcoreError(f"{saved} cannot be read, so whether the run there is this one is "
                          f"unknown; {again}") from None
    changed = recipe_changes(old.to_dict(), recipe.to_dict())
    if changed:
        kind = "a finished" if finished else "an interrupted"
        raise KdcoreError(f"{run_dir} holds {kind} run of another recipe (it "
                          f"differs at {changed}); {again}")


def recorded_code(run_dir: Path) -> dict[str, str]:
    """The digests the run in ``run_dir`` recorded; empty where its history records none
    (made before kdcore did) or cannot be read (the commands that need it say why)."""
    from kdcore.errors import KdcoreError
    from kdcore.history import History

    try:
        with History(run_dir) as h:
            code = h.setup.get("code")
    except (KdcoreError, OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in code.items()} if isinstance(code, dict) else {}


def mixed_code(run_dirs: Sequence[Path]) -> str | None:
    """A warning when the runs in ``run_dirs`` were made by different code (a distribution
    with two digests among them), naming it and two runs that differ; None when they agree
    or recorded nothing."""
    first: dict[str, tuple[str, Path]] = {}
    for run_dir in run_dirs:
        for dist, digest in recorded_code(run_dir).items():
            seen = first.setdefault(dist, (digest, run_dir))
            if seen[0] != digest:
                return (f"the runs were made by different code: {dist} differs between "
                        f"{seen[1]} and {run_dir}; rerun those made before the edit to compare "
                        f"like with like")
    return None


__all__ = ["check_same_recipe", "code_changes", "code_digests", "mixed_code", "package_digest",
           "recipe_changes", "recorded_code"]
