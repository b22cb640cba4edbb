"""docs/api.md's and docs/history.md's ```python blocks, run as written, in order, each page in
one namespace in an empty directory. api.md's first block writes the tiny recipe the others use;
history.md reads ``runs/amlkd``, made here from the same tiny recipe (1 epoch per stage)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (DOCS / page).read_text(), re.S | re.M)


def run_blocks(page: str) -> dict:
    namespace: dict = {"__name__": "__doc__"}
    for i, code in enumerate(blocks(page)):
        exec(compile(code, f"{page} block {i + 1}", "exec"), namespace)
    return namespace


def test_the_pages_have_python_blocks():
    assert len(blocks("api.md")) >= 5 and len(blocks("history.md")) >= 2


@pytest.mark.slow
def test_api_md_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = run_blocks("api.md")
    assert ns["result"].run_dir == Path("runs/tiny-s1")
    assert (ns["grid"].ran, ns["grid"].failed) == (2, 0)


@pytest.mark.slow
def test_history_md_runs(tmp_path, monkeypatch):
    import kdcore
    from kdcore.testing import component, stage, teacher_stage, tiny_recipe

    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(teacher_stage(1), stage("student", 1, ["student"],
                                                 component("hinton_kd")), train_subset=120)
    kdcore.run(recipe, out="runs/amlkd")
    ns = run_blocks("history.md")
    assert list(ns["h"].metrics["stage"]) == ["teacher", "student"]
