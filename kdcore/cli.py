"""The ``kdcore`` command line: run, check, plugins, inspect, ablate, report, label-issues,
noise.

A user's mistake ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from kdcore.cli_common import (
    EXIT_USER_ERROR,
    configure_logging,
    examples,
    parse_seeds,
    plugin_host,
    plugin_option,
    set_option,
    stop_on_signals,
    strict_option,
    user_errors,
)
from kdcore.cli_files import GivenPath, reading
from kdcore.errors import KdcoreError, console_gone, os_reason, printable
from kdcore.failures import one_line_failures
from kdcore.torchrun import die_with_launcher


class _OneLineErrors(click.Group):
    """click's usage errors (a missing argument, a bad option value) as one line and exit 2,
    like every other user error, instead of click's usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102 - click's entry point
        kwargs.pop("standalone_mode", None)
        # a name from a non-UTF-8 argument or folder holds lone surrogates; printed, they are
        # escaped (as stderr already does) rather than a UnicodeEncodeError mid-table
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, io.TextIOWrapper):
                stream.reconfigure(errors="backslashreplace")
        try:
            # outside standalone mode click returns the code of an Exit (--help, --version)
            # rather than exiting; the console script passes it to sys.exit
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("kdcore: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            message = printable(" ".join(exc.format_message().split()))
            click.echo(f"kdcore: error: {message}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except ValueError as exc:  # a NUL byte in a path argument, found by os.stat
            if "null" not in str(exc):
                raise
            click.echo("kdcore: error: a path on the command line contains a NUL byte",
                       err=True)
            sys.exit(EXIT_USER_ERROR)


@click.group(cls=_OneLineErrors, epilog=examples(
    "kdcore run recipes/kd.toml --out runs/kd",
    "kdcore inspect runs/kd",
    "kdcore plugins --verbose"))
@click.version_option(package_name="kdcore")
def main() -> None:
    """Knowledge distillation under noisy labels."""



@main.command(epilog=examples(
    "kdcore run recipes/kd.toml --out runs/kd",
    "kdcore run recipes/kd.toml --set 'data.noise.model=\"pair_flip\"' --out runs/kd-pair",
    "kdcore run recipes/kd.toml --out runs/kd --resume",
    "kdcore run recipes/kd.toml --out runs/kd-2 --nproc 2"))
@click.argument("recipe", type=GivenPath(dir_okay=False, path_type=Path))
@set_option
@click.option("--out", type=GivenPath(file_okay=False), help="Run directory "
              "(default: run.output_dir/run.name).")
@click.option("--resume", is_flag=True, help="Continue the run in the run directory from its "
              "last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in the run directory.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors.")
@click.option("--progress/--no-progress", default=None, help="Progress bar over batches "
              "(default: when stderr is a terminal).")
@click.option("--nproc", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Train in this many processes on this machine (one per GPU; gloo on the "
                   "CPU), through torchrun; data.batch_size stays the global batch.")
@plugin_option
@strict_option
@user_errors(on_interrupt="resume with --resume")
@one_line_failures("the run")
def run(recipe: Path, overrides: tuple[str, ...], out: str | None, resume: bool,
        overwrite: bool, quiet: bool, progress: bool | None, nproc: int,
        plugins: tuple[str, ...], strict_plugins: bool) -> None:
    """Train as RECIPE says, writing a history, checkpoints and weights to the run directory."""
    from kdcore import distributed
    from kdcore.recipe import load_recipe

    rank = int(os.environ.get("RANK", "0")) if distributed.launched() else 0
    die_with_launcher()  # of --nproc or a grid: not left training alone if it is killed
    host = plugin_host(plugins, strict_plugins)  # quiet while plugins load: warnings only
    configure_logging(quiet)  # the other ranks': errors only (they would repeat rank 0's)
    # on --resume too: the checkpoint's fingerprint refuses a recipe that differs
    resolved = load_recipe(recipe, overrides)
    if nproc > 1:
        if distributed.launched():
            raise KdcoreError("--nproc: this process is already one of a distributed run's "
                              "workers (started by torchrun); leave --nproc out")
        from kdcore.plan import build_plan, check_distributed
        from kdcore.rundir import RunDirLock, prepare_run_dir
        from kdcore.torchrun import check_gpus, launch, worker_args

        check_distributed(build_plan(resolved, host), nproc)  # fails here, once
        check_gpus(resolved.run.device, nproc)
        if not overwrite:  # the refusals the workers would give: a live run, an earlier one
            with RunDirLock() as in_use:  # the first worker takes it for the run
                prepare_run_dir(resolved, out, resume=resume, overwrite=False, lock=in_use)
        launch(nproc, worker_args(recipe, overrides, out, resume, overwrite, quiet, progress,
                                  plugins, strict_plugins))
        return
    from kdcore.engine import run_recipe

    # a kill or a pre-emption stops the run as Ctrl-C does; but torchrun's agent stops its
    # workers with SIGTERM when one fails, and names that one itself
    with contextlib.nullcontext() if distributed.launched() else stop_on_signals():
        summary = run_recipe(resolved, out=out, resume=resume, overwrite=overwrite, host=host,
                             progress=progress, overrides=overrides)
    if rank > 0:
        return
    try:
        for role, s in summary.items():
            best = ("no validation split" if s["best_val_epoch"] is None else
                    f"test acc {s['test_acc_at_best_val']:.4f} at best-val epoch "
                    f"{s['best_val_epoch'] + 1} of stage '{s['stage']}'")
            click.echo(f"{role}: {best}, last {s['last_test_acc']:.4f} ({s['kept']} kept)")
    except OSError as exc:  # stdout on a full disk read "the run stopped", after it finished
        if console_gone(exc):
            raise
        from kdcore.failures import RunFailed
        from kdcore.rundir import run_dir_of

        raise RunFailed(f"the run finished (its results are in "
                        f"{run_dir_of(resolved, out) / 'summary.json'}), but printing them "
                        f"failed: {os_reason(exc)}") from None


@main.command(epilog=examples(
    "kdcore check recipes/kd.toml",
    "kdcore check recipes/kd.toml --set run.seed=1 --set data.noise.params.rate=0.2"))
@click.argument("recipe", type=GivenPath(dir_okay=False, path_type=Path))
@set_option
@click.option("--out", type=GivenPath(file_okay=False), help="The run directory to check "
              "(default: run.output_dir/run.name); nothing is written.")
@plugin_option
@strict_option
@user_errors
@one_line_failures("the set-up")
def check(recipe: Path, overrides: tuple[str, ...], out: str | None, plugins: tuple[str, ...],
          strict_plugins: bool) -> None:
    """Validate RECIPE (with overrides) and print it resolved, without training.

    Builds the run's whole plan and sets it up as a run would (data, models, every stage's
    components, roles and ledger wiring), writing nothing: a recipe that passes does not
    fail while its run is being set up.
    """
    from kdcore.engine import dry_setup
    from kdcore.recipe import load_recipe

    host = plugin_host(plugins, strict_plugins)
    resolved = load_recipe(recipe, overrides)
    configure_logging(quiet=True)
    dry_setup(resolved, host, out)  # everything a run does before its first batch
    click.echo(resolved.to_toml(), nl=False)


@main.command(epilog=examples(
    "kdcore plugins",
    "kdcore plugins --verbose",
    "kdcore plugins --json --verbose"))
@plugin_option
@strict_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verbose", "-v", is_flag=True, help="Also each component's description and "
              "parameters (name, type, default, doc).")
@user_errors
def plugins(plugins: tuple[str, ...], strict_plugins: bool, as_json: bool,
            verbose: bool) -> None:
    """List plugins: distribution, version, what each provides and the hooks it implements."""
    from kdcore.cli_plugins import details, print_plugins

    host = plugin_host(plugins, strict_plugins)
    if as_json:
        import attrs

        out = []
        for info in host.infos.values():
            entry = attrs.asdict(info)
            if verbose and not info.error:
                entry["components"] = details(host, info.provides.get("components", []))
            out.append(entry)
        click.echo(json.dumps(out, indent=2))
        return
    print_plugins(host, verbose)


_SUMMARY_PATTERNS = ("train/*/loss", "test/*/acc", "test/*/bacc", "label/acc",
                     "select/*/fraction", "select/*/precision", "select/*/recall")


@main.command(epilog=examples(
    "kdcore inspect runs/kd",
    "kdcore inspect runs/kd --metrics 'test/*/acc,label/acc' --csv metrics.csv",
    "kdcore inspect runs/kd --column target --column loss/ce --csv ledger.csv",
    "kdcore inspect runs/kd --column all --csv ledger.csv",
    "kdcore inspect runs/kd --cartography dynamics/ --model student"))
@click.argument("run_dir", type=GivenPath(exists=False, path_type=Path))
@click.option("--column", "columns", multiple=True, metavar="NAME|all",
              help="Export this ledger column over epochs (repeatable; e.g. target, "
                   "select/small_loss; 'all': every column), one CSV row per epoch and sample "
                   "with its sample_id, clean_label and noisy_label.")
@click.option("--csv", "csv_path", type=GivenPath(dir_okay=False, path_type=Path),
              help="Where --column (or the per-epoch metrics) goes as CSV: exact values, "
                   "missing ones as empty cells (default for --column: stdout).")
@click.option("--cartography", type=GivenPath(file_okay=False, path_type=Path),
              help="Write Dataset Cartography training dynamics (dynamics_epoch_E.jsonl) here, "
                   "one file per epoch in which the model trained.")
@click.option("--model", "role", default=None, help="Model role for --cartography "
              "(default: the first with recorded logits).")
@click.option("--metrics", "patterns", default=None,
              help="Comma-separated metric names or glob patterns to print.")
@user_errors
@reading
def inspect(run_dir: Path, columns: tuple[str, ...], csv_path: Path | None,
            cartography: Path | None, role: str | None, patterns: str | None) -> None:
    """Print a per-epoch summary of RUN_DIR's history, or export from it."""
    from kdcore.cli_inspect import inspect_run

    inspect_run(run_dir, columns=columns, csv_path=csv_path, cartography=cartography,
                role=role, patterns=patterns.split(",") if patterns else _SUMMARY_PATTERNS)


@main.command(epilog=examples(
    "kdcore ablate recipes/ce.toml recipes/kd.toml --seeds 0,1,2 --out runs/base",
    "kdcore ablate recipes/kd.toml --variant 'T2:stages.student.components.kd.params."
    "temperature=2' --out runs/kd-temp --jobs 2",
    "kdcore ablate recipes/ce.toml recipes/kd.toml --seeds 0,1,2 --out runs/base --dry-run"))
@click.argument("recipes", nargs=-1, type=GivenPath(dir_okay=False, path_type=Path))
@click.option("--grid", type=GivenPath(dir_okay=False, path_type=Path),
              help="A grid TOML (seeds, variants with their recipe and overrides).")
@click.option("--seeds", default=None,
              help="Comma-separated seeds and ranges, e.g. 0-4,10 (default: the grid's, or 0).")
@click.option("--variant", "variants", multiple=True, metavar="NAME:KEY=VAL;KEY=VAL",
              help="A variant of each recipe (repeatable; of several recipes, named "
                   "RECIPE-NAME); none: each recipe as it is.")
@set_option
@click.option("--out", required=True, type=GivenPath(file_okay=False, path_type=Path),
              help="Grid directory: runs go to OUT/<variant>/seed<k>/.")
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runs in parallel (separate processes); 1 runs in this process.")
@click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local",
              show_default=True,
              help="local: --jobs processes here; slurm: every run a SLURM job (submitit).")
@click.option("--slurm-partition", default=None, help="slurm: the partition.")
@click.option("--slurm-time", type=click.IntRange(min=1), default=60, show_default=True,
              help="slurm: time limit per run, minutes (a run cut off is requeued and resumes).")
@click.option("--slurm-gpus", type=click.IntRange(0), default=0, show_default=True,
              help="slurm: GPUs per run.")
@click.option("--slurm-cpus", type=click.IntRange(1), default=2, show_default=True,
              help="slurm: CPUs per run.")
@click.option("--slurm-mem-gb", type=click.FloatRange(0, 1e6, min_open=True), default=8,
              show_default=True, help="slurm: memory per run, GB.")
@click.option("--slurm-folder", type=GivenPath(file_okay=False, path_type=Path), default=None,
              help="slurm: submitit's job files and logs (default OUT/.submitit).")
@click.option("--dry-run", is_flag=True,
              help="Check every run and list what each would do (start, resume, skip); run "
                   "none.")
@plugin_option
@strict_option
@user_errors(on_interrupt="the same kdcore ablate again resumes it (finished runs are skipped)")
def ablate(recipes: tuple[Path, ...], grid: Path | None, seeds: str | None,
           variants: tuple[str, ...], overrides: tuple[str, ...], out: Path, jobs: int,
           launcher: str, slurm_partition: str | None, slurm_time: int, slurm_gpus: int,
           slurm_cpus: int, slurm_mem_gb: float, slurm_folder: Path | None, dry_run: bool,
           plugins: tuple[str, ...], strict_plugins: bool) -> None:
    """Run recipes x variants x seeds; finished runs are skipped, interrupted ones resumed."""
    from kdcore import grid as ab

    configure_logging(quiet=True)
    if plugins and (jobs != 1 or launcher != "local"):
        # the runs of --jobs N and SLURM build their plugin host in another process
        raise KdcoreError("--plugin loads into this process: it takes --jobs 1 and the local "
                          "launcher (install the plugin as a package to use it with others)")
    specs_variants: list[ab.Variant] = []
    grid_seeds = [0]
    if grid:
        specs_variants, grid_seeds = ab.read_grid(grid)
    for recipe in recipes:
        if variants:  # several recipes' variants are told apart by their recipe's name
            prefix = f"{recipe.stem}-" if len(recipes) > 1 else ""
            specs_variants += [ab.parse_variant(v, str(recipe), prefix) for v in variants]
        else:
            specs_variants.append(ab.Variant(recipe.stem, str(recipe)))
    if not specs_variants:
        raise KdcoreError("nothing to run: give RECIPES or --grid")
    if overrides:
        specs_variants = [ab.Variant(v.name, v.recipe, [*overrides, *v.set])
                          for v in specs_variants]
    seed_list = parse_seeds(seeds) if seeds else grid_seeds
    specs = ab.plan(specs_variants, seed_list, out)
    # SLURM's and --jobs' runs load the installed plugins, as this host does without --plugin
    host = plugin_host(plugins, strict_plugins)
    ab.check_specs(specs, host)
    if dry_run:  # checked as each would start; the grid's folder is left as it is
        from kdcore.checkpoint import CHECKPOINT  # stopped before its first: starts anew
        does = {"new": "would start", "partial": "would resume", "done": "finished: skipped"}
        for spec in specs:
            state = ab.status(spec)
            early = state == "partial" and not (spec.out / CHECKPOINT).is_file()
            click.echo(f"{spec.variant.name} seed {spec.seed}: {does['new' if early else state]} "
                       f"({spec.out})")
        click.echo(f"grid {out}: {len(specs)} run{'s' * (len(specs) != 1)} checked, none run "
                   "(--dry-run)")
        return
    if launcher == "slurm":
        from kdcore import launchers

        make_executor = launchers.slurm_executor(
            partition=slurm_partition, time_min=slurm_time, gpus=slurm_gpus, cpus=slurm_cpus,
            mem_gb=slurm_mem_gb)
        counts = launchers.launch_grid(specs, make_executor, echo=click.echo,
                                       folder=slurm_folder or out / ".submitit")
    else:
        # a SIGTERM stops the grid as Ctrl-C does: the runs of --jobs 1 are in this process,
        # those of --jobs N are each passed the signal and waited for
        with stop_on_signals():
            counts = ab.run_grid(specs, jobs=jobs, echo=click.echo,
                                 in_process=lambda spec, resume: ab.run_spec(spec, resume, host))
    click.echo(f"grid {out}: {counts['ran']} ran, {counts['skipped']} skipped, "
               f"{counts['failed']} failed")
    if counts["failed"]:
        sys.exit(1)


@main.command(epilog=examples(
    "kdcore report runs/base",
    "kdcore report runs/base --model student --csv table.csv --plots runs/base/plots",
    "kdcore report runs/base --baseline ce --ceiling clean --html runs/base/report",
    "kdcore report runs/base --baseline ce --ceiling clean --gap-model student"))
@click.argument("runs", nargs=-1, required=True, type=GivenPath(path_type=Path))
@click.option("--markdown", "md_path", type=GivenPath(dir_okay=False, path_type=Path),
              help="Write the table as Markdown here (default: print it).")
@click.option("--csv", "csv_path", type=GivenPath(dir_okay=False, path_type=Path),
              help="Write the table as CSV here.")
@click.option("--plots", type=GivenPath(file_okay=False, path_type=Path),
              help="Write every figure here as PNG (needs matplotlib).")
@click.option("--html", "html_dir", type=GivenPath(file_okay=False, path_type=Path),
              help="Write one self-contained HTML page (table, runs, figures) as "
                   "DIR/index.html (needs matplotlib).")
@click.option("--model", "role", default=None, metavar="ROLE",
              help="The model to report of each variant (default: student); a variant without "
                   "it shows its final trained model (its recipe's last stage's), as the model "
                   "column says. A ROLE no run has is an error.")
@click.option("--baseline", default=None, help="Variant for the noise-gap recovery's floor.")
@click.option("--ceiling", default=None, help="Variant for the noise-gap recovery's ceiling.")
@click.option("--gap-model", "gap_models", multiple=True,
              help="Model role(s) that get the gap column (repeatable; default: every "
                   "variant's reported model).")
@user_errors
@reading
def report(runs: tuple[Path, ...], md_path: Path | None, csv_path: Path | None,
           plots: Path | None, html_dir: Path | None, role: str | None, baseline: str | None,
           ceiling: str | None, gap_models: tuple[str, ...]) -> None:
    """Tables (mean and std over seeds, best-validation and last epoch), figures and an HTML
    page of RUNS."""
    from kdcore.cli_report import report_runs

    report_runs(runs, md_path=md_path, csv_path=csv_path, plots=plots, html_dir=html_dir,
                role=role, baseline=baseline, ceiling=ceiling, gap_models=gap_models)


# kdcore label-issues (kdcore/cli_label_issues.py)
from kdcore.cli_label_issues import command as _label_issues  # noqa: E402

main.add_command(_label_issues(lambda fn: user_errors(reading(fn)), examples))

from kdcore.cli_noise import noise as _noise  # noqa: E402  (kdcore noise)

main.add_command(_noise)


if __name__ == "__main__":
    main()
