"""Every recipe in recipes/ passes `kdcore check` with the installed plugins: its components,
parameters, datasets and noise models exist and validate (the base files are only extended)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kdcore.cli import main

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", [p for p in RECIPES if not p.name.startswith("base-")],
                         ids=lambda p: p.stem)
def test_shipped_recipe_checks(path):
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output


def test_base_recipes_are_not_runnable_alone():
    bases = [p for p in RECIPES if p.name.startswith("base-")]
    assert bases
    for path in bases:
        result = CliRunner().invoke(main, ["check", str(path)])
        assert result.exit_code == 2 and "at least one [[stages]]" in result.output
