"""Tiny two-stage digits recipes (a teacher stage, then a student stage) run in process."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from kdcore.testing import (
    MODELS,
    component,
    quiet_logs,  # noqa: F401 (autouse fixtures)
    run_tiny,
    stage,
    teacher_stage,
    tiny_recipe,
)


def student_component(use: str, *, name: str | None = None, weight: float = 1.0,
                      params: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """One component of the student stage; ``params`` default to ``{teacher = "teacher"}``
    (``models``, ``terms`` as keywords)."""
    if params is None:
        params = {"teacher": "teacher"}
    return component(use, name, params=params, weight=weight, **fields)


@pytest.fixture
def comp() -> Callable[..., dict[str, Any]]:
    """The :func:`student_component` helper (``comp("ce", params={})`` is the CE term)."""
    return student_component


def lsh_recipe_data(*components: Mapping[str, Any], student_hidden: int = 16, epochs: int = 1,
                    seed: int = 0, more_stages: Sequence[Mapping[str, Any]] = ()
                    ) -> dict[str, Any]:
    """A tiny recipe (kdcore.testing's, checkpointed every epoch: the resume tests kill
    mid-stage): a teacher stage, a student stage with ``components``, then ``more_stages``."""
    student = {**MODELS["student"], "params": {"hidden": [student_hidden]}}
    return tiny_recipe(
        teacher_stage(2),
        stage("student", epochs, ["student"], *components),
        *more_stages,
        models={**MODELS, "student": student}, name="lsh-test", seed=seed,
    )


@pytest.fixture
def run_lsh(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Run :func:`lsh_recipe_data` (whose options it takes) in process; returns the summary."""
    count = [0]

    def run(*components: Mapping[str, Any], plugins: Iterable[Any] = (), out: Path | None = None,
            resume: bool = False, **options: Any) -> dict[str, Any]:
        count[0] += 1
        return run_tiny(lsh_recipe_data(*components, **options),
                        out or tmp_path / f"run{count[0]}", plugins=plugins, resume=resume)

    return run
