"""``kdcore noise``: the noisy labels that a recipe's runs train on, for every sample of the
dataset loader's training split, written as a file the ``label_file`` noise model reads back:
one corruption shared by runs of other seeds and splits, and by other codebases."""

from __future__ import annotations

from pathlib import Path

import click

from kdcore.cli_common import (
    examples,
    plugin_host,
    plugin_option,
    set_option,
    strict_option,
    user_errors,
)
from kdcore.cli_files import GivenPath, check_output, write_bytes
from kdcore.data.label_file import FORMATS, labels_file_bytes
from kdcore.failures import one_line_failures


@click.command(epilog=examples(
    "kdcore noise recipes/kd.toml --out noise.npy",
    "kdcore noise recipes/kd.toml --set run.seed=1 --out noise-seed1.json"))
@click.argument("recipe", type=GivenPath(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=GivenPath(dir_okay=False, path_type=Path),
              help=f"The file to write, by its suffix: {', '.join(FORMATS)} (.txt and .csv: "
                   "one label per line).")
@set_option
@plugin_option
@strict_option
@user_errors
@one_line_failures("building the data")
def noise(recipe: Path, out: Path, overrides: tuple[str, ...], plugins: tuple[str, ...],
          strict_plugins: bool) -> None:
    """Write the observed label of every sample of RECIPE's dataset to OUT.

    Row i is sample id i (the dataset loader's training split, in its order; the history's
    sample_id): the label a run of RECIPE with its seed trains on for its training rows and,
    with data.noise.apply_to_val, its validation rows; the other rows (gold, a test split
    carved from the training data) keep their true labels. The label_file noise model reads
    the file back: --set 'data.noise={model="label_file", params={path="noise.npy"}}'. The
    data is built as the run builds it; nothing is trained.
    """
    import torch

    from kdcore.errors import RecipeError
    from kdcore.recipe import load_recipe
    from kdcore.rundata import build_run_data

    host = plugin_host(plugins, strict_plugins)
    resolved = load_recipe(recipe, overrides)
    labels_file_bytes([], out.suffix)  # a bad suffix is refused before the data is built
    check_output(out)
    try:
        data = build_run_data(resolved.data, host, resolved.run.seed, torch.device("cpu"))
    except RecipeError as exc:
        raise exc.at(file=resolved.source) from None
    labels = data.source_noisy
    assert labels is not None  # build_run_data fills it
    write_bytes(out, labels_file_bytes(labels, out.suffix))
    trained = len(data.train) + (len(data.val) if resolved.data.noise.apply_to_val else 0)
    flipped = int((data.train_noisy != data.train.y.to(data.train_noisy.device)).sum())
    if resolved.data.noise.apply_to_val:
        flipped += int((data.val_noisy != data.val.y.to(data.val_noisy.device)).sum())
    click.echo(f"wrote {len(labels):,} labels to {out}: {trained:,} rows as the run sees them "
               f"({flipped:,} differ from the true label), the other "
               f"{len(labels) - trained:,} their true labels")
