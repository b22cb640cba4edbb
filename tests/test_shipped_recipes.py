"""Every recipe in recipes/ passes `kdcore check` with the installed plugins: the whole dry
set-up (data, models, every stage's components, roles and ledger wiring). The Fashion-MNIST
recipes read a small generated set in the real IDX layout (the base files are only extended)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import kdcore
from kdcore.cli import main
from kdcore.testing import write_fashion_mnist

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))
# what the small generated Fashion-MNIST cannot hold as shipped
SMALL_DATA = {"ff-fmnist": ["--set", "data.params.max_per_class=0"]}


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    # enough images per class for the recipes' gold splits (100 per class) and subsets
    root = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(root, n_train=2500, n_test=200)
    return root


@pytest.mark.parametrize("path", [p for p in RECIPES if p.name[:5] not in ("base-", "cifar")],
                         ids=lambda p: p.stem)  # cifar*: checked in tests/test_cifar_recipes.py
def test_shipped_recipe_checks(path, fashion_root, monkeypatch):
    monkeypatch.setenv("KDCORE_FASHION_MNIST", str(fashion_root))
    result = CliRunner().invoke(main, ["check", str(path), *SMALL_DATA.get(path.stem, [])])
    assert result.exit_code == 0, result.output


def test_base_recipes_are_not_runnable_alone():
    bases = [p for p in RECIPES if p.name.startswith("base-")]
    assert bases
    for path in bases:
        result = CliRunner().invoke(main, ["check", str(path)])
        assert result.exit_code == 2 and "at least one [[stages]]" in result.output


@pytest.mark.slow
def test_amlkd_with_a_batch_scoped_selection_runs(tmp_path):
    """AWE and teacher LP read select/small_loss at the refine stage's first epoch start: a
    batch-scoped small_loss (kdcore-selection) must have the column by then."""
    recipe = kdcore.load_recipe(Path(__file__).parents[1] / "recipes" / "amlkd.toml", [
        "data.train_subset=60", *(f"stages.{s}.epochs=1" for s in range(4)),
        'stages.refine.components.small_loss.params={rate=0.2, scope="batch", '
        'mask_loss=true}'])
    kdcore.run_recipe(recipe, out=str(tmp_path / "run"))
    with kdcore.History(tmp_path / "run") as h:
        assert "select/small_loss" in h.column_names()
