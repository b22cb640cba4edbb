"""Mutation testing (mutmut) over the formula and wiring modules of kdcore and its plugins.

Each target is mutated in a copy of its package under ``.mutants/<target>/`` (mutmut runs the
tests against mutated copies of the modules, so the working tree is never touched), and its
surviving mutants are written to ``.mutants/<target>/survivors.txt`` with their diffs;
``.mutants/summary.json`` holds the counts. docs/mutation.md lists every survivor of the targets
run so far, each killed by a test or argued equivalent.

Usage:  .venv/bin/python benchmarks/mutants.py [TARGET ...]    (``make mutants``; no target:
all of them, which takes hours on 2 cores; ``--list`` names them)
        .venv/bin/python benchmarks/mutants.py TARGET --only 'kdcore.figures.curves.x_draw_curve*'
(only the mutants whose names match, as mutmut names them: ``<module>.x_<function>__mutmut_<n>``,
``<module>.xǁ<Class>ǁ<method>__mutmut_<n>``; repeatable; a slow target run function by function)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".mutants"

# target: (package directory, modules to mutate, the tests that exercise them)
TARGETS: dict[str, tuple[str, list[str], list[str]]] = {
    # kdcore/step.py was run on its own before (docs/mutation.md), with tests/test_step.py
    "kdcore": (".", ["kdcore/losses.py", "kdcore/metrics.py"],
               ["tests/test_losses.py", "tests/test_metrics.py",
                "tests/test_losses_metrics_mutants.py", "tests/test_terms.py"]),
    # a transfer term as a row-wise function: its reduction, its record, the combine rules
    "kdcore-terms": (".", ["kdcore/terms.py", "kdcore/records.py", "kdcore/step.py"],
                     ["tests/test_terms.py", "tests/test_step.py", "tests/test_engine.py"]),
    # the combination rules and the batch hooks' contracts alone, with their unit tests
    # (session 37: fast enough to run function by function)
    "kdcore-step": (".", ["kdcore/step.py", "kdcore/hook_writes.py"],
                    ["tests/test_step.py", "tests/test_terms.py", "tests/test_hook_writes.py"]),
    # what the reading commands write and how they read a damaged run (session 10)
    "kdcore-cli-files": (".", ["kdcore/cli_files.py"],
                         ["tests/test_cli_files.py", "tests/test_read_commands_damage.py"]),
    # the Python API's argument checks, the --nproc launcher's error lines, the pandas frames
    # (session 13); the real two-process runs (slow) start processes outside the copy
    "kdcore-api-input": (".", ["kdcore/api_args.py", "kdcore/torchrun.py", "kdcore/frames.py"],
                         ["tests/test_api.py", "tests/test_distributed.py", "-m", "not slow"]),
    # the label_file noise model and its writer (session 14): a file a user hands in
    "kdcore-label-file": (".", ["kdcore/data/label_file.py"], ["tests/test_label_file.py"]),
    # the range checks every recipe number passes, and a stage's evaluation (session 15)
    "kdcore-validators": (".", ["kdcore/validators.py"],
                          ["tests/test_validators.py", "tests/test_config.py"]),
    "kdcore-evaluation": (".", ["kdcore/evaluation.py"],
                          ["tests/test_confusion.py", "tests/test_metrics.py",
                           "tests/test_best_keeper.py"]),
    # the report's table: which model, mean and spread over seeds, the gap (session 15)
    "kdcore-report": (".", ["kdcore/report.py", "kdcore/report_models.py"],
                      ["tests/test_ablate_report.py", "tests/test_report_choices.py",
                       "tests/test_report_table.py", "tests/test_history_skip.py"]),
    # batch augmentations and a finished run's ranked label issues (session 15)
    "kdcore-augment": (".", ["kdcore/data/augment.py"], ["tests/test_augment.py"]),
    # not the tests of benchmarks/label_issues_cleanlab.py (outside the copy)
    "kdcore-label-ranking": (".", ["kdcore/label_ranking.py"],
                             ["tests/test_label_issues.py", "tests/test_history_skip.py", "-k",
                              "not list_scores and not "
                              "grid_setting_of_a_path and not comparison_on_a_tiny_run"]),
    # the noise models and the validation split (session 15): the rates a paper reports
    "kdcore-noise": (".", ["kdcore/data/noise.py", "kdcore/data/splits.py",
                           "kdcore/data/class_map.py"],
                     ["tests/test_noise.py", "tests/test_splits.py",
                      "tests/test_cifar_n_per_image.py", "tests/test_noise_mutants.py",
                      "tests/test_noise_class_map.py"]),
    # the dataset loaders (session 16): files a user hands in, read without executing code;
    # not the CIFAR recipes' smoke runs nor the streaming runs with DataLoader workers (whole
    # runs, seconds each, testing no loader line more)
    "kdcore-loaders": (".", ["kdcore/data/loaders"],
                       ["tests/test_data_loaders.py", "tests/test_data_safety.py",
                        "tests/test_malformed_data.py", "tests/test_cifar_n_per_image.py",
                        "tests/test_cifar_recipes.py", "tests/test_streaming.py",
                        "tests/test_npz_loader.py", "tests/test_images.py",
                        "-k", "not smoke_run and not workers"]),
    # the digest of each training input that --resume compares (session 33)
    "kdcore-digest": (".", ["kdcore/data/digest.py"], ["tests/test_input_digest.py"]),
    # kdcore_lp/graph.py was run on its own before (docs/mutation.md); this target reruns
    # parts of it with --only (session 30: the faiss search)
    "kdcore-lp-graph": ("plugins/kdcore-lp", ["kdcore_lp/graph.py"], ["tests"]),
    # the history's crash safety (session 17): the rollback journal, its recovery, the lock,
    # and the rebuild of a file HDF5 can read but not append to
    "kdcore-journal": (".", ["kdcore/history_journal.py", "kdcore/history_rebuild.py"],
                       ["tests/test_history_crash.py", "tests/test_history.py",
                        "tests/test_history_journal.py"]),
    # checkpoints (session 17): atomic writes, weights-only reads, the resume fingerprint
    "kdcore-checkpoint": (".", ["kdcore/checkpoint.py", "kdcore/checkpointing.py"],
                          ["tests/test_checkpoint.py", "tests/test_checkpoint_contract.py",
                           "tests/test_resume_contract.py", "tests/test_run_dir_damage.py",
                           "tests/test_loop.py", "tests/test_input_digest.py"]),
    # the ledger (session 17): every per-sample column, its producer and kind, its state
    "kdcore-ledger": (".", ["kdcore/ledger.py"],
                      ["tests/test_ledger.py", "tests/test_step.py", "tests/test_terms.py",
                       "tests/test_history.py", "tests/test_resume_contract.py"]),
    # the helpers every one-line message goes through (session 17)
    "kdcore-errors": (".", ["kdcore/errors.py"],
                      ["tests/test_errors.py", "tests/test_checkpoint.py",
                       "tests/test_failures.py", "tests/test_broken_pipe.py",
                       "tests/test_history.py"]),
    # the history file's writer, reader and layout (session 18): what every epoch row holds
    "kdcore-history": (".", ["kdcore/history_writer.py", "kdcore/history.py",
                             "kdcore/history_layout.py", "kdcore/history_values.py",
                             "kdcore/history_forecast.py"],
                       ["tests/test_history.py", "tests/test_history_crash.py",
                        "tests/test_history_journal.py", "tests/test_history_format.py",
                        "tests/test_history_skip.py", "tests/test_api.py",
                        "tests/test_metrics.py", "tests/test_history_forecast.py"]),
    # the run plan (session 18): the checks `kdcore check` and every run make before training
    # (session 42: the data-flow check moved to kdcore/dataflow.py, the key paths beside it)
    "kdcore-plan": (".", ["kdcore/plan.py", "kdcore/dataflow.py", "kdcore/plan_keys.py"],
                    ["tests/test_plan.py", "tests/test_column_kinds.py",
                     "tests/test_history_skip.py"]),
    # the running training's state and a component's view of it (session 18)
    "kdcore-runstate": (".", ["kdcore/runstate.py", "kdcore/history_names.py",
                              "kdcore/tagged_ledger.py"],
                        ["tests/test_runstate.py", "tests/test_best_keeper.py",
                         "tests/test_column_kinds.py", "tests/test_history.py"]),
    # reading a recipe: TOML, extends, --set overrides, and writing the resolved recipe back
    # (session 18)
    "kdcore-recipe": (".", ["kdcore/recipe/resolve.py", "kdcore/recipe/writer.py"],
                      ["tests/test_recipe.py", "tests/test_recipe_writer.py",
                       "tests/test_bad_input.py", "tests/test_recipe_reading.py",
                       "tests/test_resume_contract.py", "tests/test_history_skip.py"]),
    # plain data to typed objects, and the recipe's cross-field rules (session 18)
    "kdcore-config": (".", ["kdcore/config.py", "kdcore/recipe/rules.py"],
                      ["tests/test_config.py", "tests/test_config_structure.py",
                       "tests/test_recipe_rules.py", "tests/test_recipe.py"]),
    # ablation grids: grid files, --variant text, run directories, what is pending (session 18)
    "kdcore-grid": (".", ["kdcore/grid.py"], ["tests/test_ablate_input.py", "tests/test_grid.py",
                                              "tests/test_plugin_exits.py"]),
    # a run's data: splits, noise, inputs, batches, a rank's share (session 19)
    "kdcore-rundata": (".", ["kdcore/rundata.py", "kdcore/class_warnings.py",
                             "kdcore/data/split_checks.py"],
                       ["tests/test_rundata.py", "tests/test_impossible_params.py",
                        "tests/test_label_file.py", "tests/test_streaming.py"]),
    # a run's set-up from its plan: seeds, models sized and built, the first ledger columns
    # (session 19)
    "kdcore-prepare": (".", ["kdcore/prepare.py"],
                       ["tests/test_prepare.py", "tests/test_impossible_params.py",
                        "tests/test_batching.py", "tests/test_augment.py",
                        "tests/test_footprint.py", "tests/test_build.py"]),
    # what `kdcore inspect` reads and writes: metrics, columns as CSV, cartography (session 19)
    "kdcore-cli-inspect": (".", ["kdcore/cli_inspect.py"],
                           ["tests/test_cli_inspect.py", "tests/test_read_commands_damage.py"]),
    # `kdcore report`: outputs checked first, the table, its CSV, figures, the page (session 19)
    "kdcore-cli-report": (".", ["kdcore/cli_report.py"],
                          ["tests/test_ablate_report.py", "tests/test_report_html.py"]),
    # what every command shares: one-line errors, exit codes, plugins, logging (session 19)
    "kdcore-cli-common": (".", ["kdcore/cli_common.py"], ["tests/test_cli_common.py"]),
    # what `kdcore label-issues` prints and writes (session 19)
    "kdcore-cli-label-issues": (".", ["kdcore/cli_label_issues.py"],
                                ["tests/test_cli_label_issues.py", "tests/test_label_issues.py",
                                 "-k", "not list_scores and not "
                                 "grid_setting_of_a_path and not comparison_on_a_tiny_run"]),
    # what `kdcore plugins` prints, docstrings read for parameter docs (session 19)
    "kdcore-cli-plugins": (".", ["kdcore/cli_plugins.py"],
                           ["tests/test_cli_plugins.py", "tests/test_cli_polish.py", "-k",
                            "(plugin or param_docs) and not readme"]),
    # the baselines' hooks through the component harness (session 20)
    "kdcore-builtin": (".", ["kdcore/builtin/components.py"],
                       ["tests/test_builtin_components.py"]),
    # around a run: the device string, the one-line failure, the loggers, the run directory
    # (session 20) and its lock (session 26)
    "kdcore-run-support": (".", ["kdcore/device.py", "kdcore/failures.py", "kdcore/loggers.py",
                                 "kdcore/rundir.py", "kdcore/locks.py"],
                           ["tests/test_device.py", "tests/test_failures.py",
                            "tests/test_loggers.py", "tests/test_run_dir_damage.py",
                            "tests/test_rundir.py", "tests/test_resume_contract.py",
                            "tests/test_run_dir_lock.py", "tests/test_history_journal.py",
                            "tests/test_impossible_params.py", "tests/test_plugin_exits.py",
                            # the pages logger's tests run docs/plugins.md, which the copy
                            # leaves out
                            "-k", "not pages_logger"]),
    # signals held while HDF5 calls back into Python, a stop raised once (session 26)
    # an epoch's batches (session 27): a last batch of one sample joins the one before it
    "kdcore-batching": (".", ["kdcore/batching.py"], ["tests/test_batching.py"]),
    "kdcore-interrupts": (".", ["kdcore/interrupts.py"],
                          ["tests/test_interrupts.py", "tests/test_cli_common.py"]),
    # the meta-learning plugins' look-ahead: the virtual SGD step (session 20)
    "kdcore-meta": (".", ["kdcore/meta.py"], ["tests/test_meta.py"]),
    # the models' training state reckoned before they are built (session 47)
    "kdcore-footprint": (".", ["kdcore/footprint.py"], ["tests/test_footprint.py"]),
    # the recipe's typed schema: every table's defaults and ranges (session 20)
    "kdcore-schema": (".", ["kdcore/recipe/schema.py"],
                      ["tests/test_config.py", "tests/test_recipe.py", "tests/test_bad_input.py",
                       "tests/test_config_structure.py", "tests/test_recipe_rules.py",
                       "tests/test_validators.py", "tests/test_history_skip.py",
                       "tests/test_build.py"]),
    # the component contract: the batch, the spec, the declared roles and columns, the per-batch
    # store, the test harness (session 20)
    "kdcore-contract": (".", ["kdcore/component.py", "kdcore/batch.py", "kdcore/context.py",
                              "kdcore/testing_harness.py", "kdcore/testing_stubs.py"],
                        ["tests/test_hookspecs.py", "tests/test_step.py", "tests/test_testing.py",
                         "tests/test_column_kinds.py", "tests/test_plan.py",
                         "tests/test_cached_outputs.py", "tests/test_builtin_components.py",
                         "tests/test_harness.py", "tests/test_update.py"]),
    # finding, loading and isolating plugins; the registries they fill (session 21)
    "kdcore-plugins": (".", ["kdcore/plugins.py", "kdcore/registry.py"],
                       ["tests/test_plugins.py", "tests/test_observers.py",
                        "tests/test_plugin_input.py", "tests/test_hookspecs.py",
                        "tests/test_cli_plugins.py", "tests/test_cli_common.py",
                        "tests/test_loggers.py", "tests/test_plugin_exits.py",
                        "-k", "not pages_logger"]),
    # the training loop: an epoch's order of work, a batch's step, the finiteness checks, the
    # epoch's metrics and row, checkpoints and resume (session 21); not the SIGKILL tests
    # (subprocesses)
    # a component's broken output: its diverged learned state, or its bug (session 46)
    "kdcore-diverged": (".", ["kdcore/diverged.py"],
                        ["tests/test_diverged.py", "tests/test_step.py", "tests/test_harness.py",
                         "tests/test_loop.py", "tests/test_engine.py", "-m", "not slow"]),
    # a batch's backward pass and optimiser steps, shared by the loop and the harness's train
    # (session 46)
    "kdcore-update": (".", ["kdcore/update.py"],
                      ["tests/test_update.py", "tests/test_harness.py", "tests/test_loop.py",
                       "tests/test_precision.py",
                       "-m", "not slow"]),
    "kdcore-loop": (".", ["kdcore/loop.py"],
                    ["tests/test_loop.py", "tests/test_engine.py", "tests/test_step.py",
                     "tests/test_resume_contract.py", "tests/test_checkpoint_contract.py",
                     "tests/test_failures.py", "tests/test_observers.py",
                     "tests/test_confusion.py", "tests/test_best_keeper.py",
                     "tests/test_cached_outputs.py",
                     "tests/test_precision.py::"
                     "test_channels_last_puts_conv_weights_and_batches_in_that_order"]),
    # a run's start: the run directory, resume and what it refuses, the banner (session 22);
    # not the SIGKILL tests (subprocesses) nor the recipe fuzz (minutes per mutant)
    "kdcore-engine": (".", ["kdcore/engine.py"],
                      ["tests/test_engine_start.py", "tests/test_run_dir_damage.py",
                       "tests/test_resume_contract.py",
                       "tests/test_history.py::test_setup_is_recorded_and_absent_reads_empty",
                       "tests/test_history.py::"
                       "test_a_gpu_runs_setup_names_the_gpu_and_its_cuda_and_cudnn_versions"]),
    # a role's optimiser and schedule; the epoch line and its time-left estimate (session 22)
    "kdcore-build": (".", ["kdcore/build.py", "kdcore/epoch_line.py"],
                     ["tests/test_build.py", "tests/test_step.py"]),
    # reading one image file, a split's channel statistics and the rows they read (session 22)
    "kdcore-images": (".", ["kdcore/data/images.py"],
                      ["tests/test_images.py", "tests/test_malformed_data.py"]),
    # the Python API's run and ablate, the SLURM launcher, the dataset types (session 23)
    "kdcore-api": (".", ["kdcore/api.py", "kdcore/launchers.py", "kdcore/data/base.py"],
                   ["tests/test_api.py", "tests/test_ablate_input.py", "tests/test_launcher.py",
                    "tests/test_streaming.py", "tests/test_rundata.py", "tests/test_images.py",
                    "tests/test_noise.py", "tests/test_noise_class_map.py", "-m", "not slow"]),
    # the model zoo: MLP, small CNN, CIFAR ResNets, Wide ResNets, torchvision's (session 23)
    "kdcore-models": (".", ["kdcore/models"],
                      ["tests/test_models.py", "tests/test_model_forward.py",
                       "tests/test_impossible_params.py",
                       "tests/test_prepare.py"]),
    # the figures (training curves, class confusion, ledger views) and the HTML report
    # (session 23)
    "kdcore-figures": (".", ["kdcore/figures", "kdcore/report_html.py"],
                       ["tests/test_figures.py", "tests/test_figures_drawn.py",
                        "tests/test_report_html.py", "tests/test_report_page.py",
                        "tests/test_ablate_report.py"]),
    # the command line: every command's options, their ranges and defaults, and `kdcore noise`
    # (session 24)
    "kdcore-cli": (".", ["kdcore/cli.py", "kdcore/cli_noise.py"],
                   ["tests/test_cli.py", "tests/test_cli_entry.py", "tests/test_cli_polish.py",
                    "tests/test_cli_option_fuzz.py", "tests/test_bad_input.py",
                    "tests/test_label_file.py", "tests/test_data_safety.py",
                    "tests/test_ablate_input.py", "tests/test_launcher.py", "tests/test_grid.py",
                    "-m", "not slow",
                    # it reads README.md, outside the copy
                    "--deselect=tests/test_cli_polish.py::"
                    "test_readme_documents_plugin_and_exports"]),
    # the public test helpers: tiny recipes, the interrupting observer, the history comparisons
    # the resume and distributed tests rest on, the dataset writers (session 24)
    "kdcore-testing": (".", ["kdcore/testing.py", "kdcore/testing_recipes.py"],
                       ["tests/test_testing.py", "tests/test_testing_history.py",
                        "tests/test_testing_builders.py", "tests/test_data_loaders.py",
                        "tests/test_component_edges.py",
                        "-m", "not slow"]),
    # several processes: the collectives with ranks simulated as threads of one process
    # (tests/test_distributed_ranks.py); gloo between torchrun workers is in the slow tests
    # (session 24)
    # which recipe and code made a run (session 29)
    "kdcore-provenance": (".", ["kdcore/provenance.py"],
                          ["tests/test_provenance.py", "tests/test_grid.py",
                           "tests/test_ablate_input.py", "tests/test_engine_start.py",
                           "tests/test_resume_contract.py"]),
    "kdcore-distributed": (".", ["kdcore/distributed.py"],
                           ["tests/test_distributed.py", "tests/test_distributed_ranks.py",
                            "-m", "not slow"]),
    # the package's lazy exports (the engine and the history load on first use; session 24)
    "kdcore-init": (".", ["kdcore/__init__.py"], ["tests/test_structure.py"]),
    # run.deterministic and the process-wide settings a run gives back (session 40)
    "kdcore-torch-state": (".", ["kdcore/torch_state.py"], ["tests/test_torch_state.py"]),
    "kdcore-lp": ("plugins/kdcore-lp", ["kdcore_lp/solve.py", "kdcore_lp/propagation.py"],
                  ["tests"]),
    # the LP component's wiring (seeds, seed weights, kept selections, when it runs)
    "kdcore-lp-component": ("plugins/kdcore-lp", ["kdcore_lp/component.py"], ["tests"]),
    "kdcore-selection": ("plugins/kdcore-selection", ["kdcore_selection/small_loss.py"],
                         ["tests"]),
    "kdcore-awe": ("plugins/kdcore-awe", ["kdcore_awe"], ["tests"]),
    # not tests/test_amlkd_recipes.py: it reads recipes/ outside the copy and tests no formula
    "kdcore-amlkd": ("plugins/kdcore-amlkd", ["kdcore_amlkd"],
                     ["tests", "--ignore=tests/test_amlkd_recipes.py"]),
    # tests that read recipes/ files, outside the copy: two whole runs, the step check and the
    # empty meta split's check
    "kdcore-almkd": ("plugins/kdcore-almkd", ["kdcore_almkd"],
                     ["tests", "--deselect=tests/test_component.py::"
                      "test_almkd_recipe_runs_on_digits_with_lambda_per_sample_each_epoch",
                      "--deselect=tests/test_component.py::"
                      "test_amal_recipe_runs_with_two_teachers_one_of_them_a_self_distillation_twin",
                      "--deselect=tests/test_step_scaling.py::"
                      "test_recipes_resolve_to_the_scaled_step",
                      "--deselect=tests/test_component.py::"
                      "test_check_refuses_a_meta_split_that_is_empty"]),
    # two of test_runs.py's tests read recipes/ outside the copy
    "kdcore-mlc": ("plugins/kdcore-mlc", ["kdcore_mlc"],
                   ["tests", "--deselect=tests/test_runs.py::test_recipe_runs_on_digits",
                    "--deselect=tests/test_runs.py::test_fashion_mnist_recipes_resolve"]),
    # not tests/test_recipes.py: whole-recipe runs, reading recipes/ outside the copy
    "kdcore-smkd": ("plugins/kdcore-smkd", ["kdcore_smkd"],
                    ["tests", "--ignore=tests/test_recipes.py"]),
    # the F&F reconstruction (session 15); not tests/test_recipes.py: it reads recipes/
    # outside the copy
    "kdcore-ff": ("plugins/kdcore-ff", ["kdcore_ff"], ["tests", "--ignore=tests/test_recipes.py"]),
    # not tests/test_recipes.py: the shipped recipes, read from recipes/ outside the copy
    "kdcore-lsh": ("plugins/kdcore-lsh", ["kdcore_lsh"],
                   ["tests", "--ignore=tests/test_recipes.py"]),
}

_COUNTS = re.compile(r"🎉 (\d+) 🫥 (\d+)\s+⏰ (\d+)\s+🤔 (\d+)\s+🙁 (\d+)\s+🔇 (\d+)")


def copy_package(name: str, dst: Path) -> list[str]:
    """Copy the target's package (its top-level module directories, ``tests/`` and
    ``pyproject.toml``; kdcore's ``recipes/`` too) into ``dst``, which must not exist; the
    top-level directories copied besides ``tests/``.
    (``benchmarks/why_mutants.py`` builds its copies of the repository with it too.)"""
    package, modules, _ = TARGETS[name]
    src = ROOT / package
    dst.mkdir(parents=True)
    top = sorted({m.split("/")[0] for m in modules})
    # kdcore's own tests read the shipped recipes beside them
    extra = ["recipes"] if package == "." else []
    for item in [*top, "tests", *extra]:
        shutil.copytree(src / item, dst / item, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(src / "pyproject.toml", dst / "pyproject.toml")
    return [*top, *extra]


def prepare(name: str) -> Path:
    """A copy of the target's package with mutmut's configuration, under .mutants/<name>."""
    _, modules, tests = TARGETS[name]
    dst = OUT / name
    shutil.rmtree(dst, ignore_errors=True)
    top = copy_package(name, dst)
    config = (dst / "pyproject.toml").read_text()
    config += ("\n[tool.mutmut]\n"
               f"paths_to_mutate = {json.dumps(modules)}\n"
               f"also_copy = {json.dumps([t + '/' for t in top])}\n"
               f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n")
    (dst / "pyproject.toml").write_text(config)
    return dst


def run(name: str, only: Sequence[str] = ()) -> dict[str, int]:
    """Run mutmut on one target (``only``: the mutants whose names match these globs); its
    survivors (with diffs) to survivors.txt."""
    where = prepare(name)
    mutmut = [str(Path(sys.executable).parent / "mutmut")]
    # one intra-op thread: mutmut forks its test runs from a process that has run torch, and a
    # forked child that uses the parent's OpenMP pool hangs (a false timeout)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*mutmut, "run", *only], cwd=where, capture_output=True, text=True,
                          env=env)
    found = _COUNTS.findall(proc.stdout + proc.stderr)
    if not found or "failed to collect stats" in proc.stdout + proc.stderr:
        raise SystemExit(f"{name}: mutmut did not run:\n{(proc.stdout + proc.stderr)[-2000:]}")
    killed, no_tests, timeout, suspicious, survived, skipped = map(int, found[-1])
    listed = subprocess.run([*mutmut, "results"], cwd=where, capture_output=True, text=True)
    names = [line.split(":")[0].strip() for line in listed.stdout.splitlines()
             if ":" in line and any(w in line for w in ("survived", "timeout", "no tests"))]
    diffs = [subprocess.run([*mutmut, "show", n], cwd=where, capture_output=True,
                            text=True).stdout for n in names]
    (where / "survivors.txt").write_text("\n".join(f"== {n}\n{d}" for n, d in zip(names, diffs)))
    # "no tests": no selected test calls the mutated function; listed with the survivors
    return {"killed": killed, "survived": survived, "no_tests": no_tests, "timeout": timeout,
            "suspicious": suspicious, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="targets (default: all)")
    parser.add_argument("--list", action="store_true", help="name the targets and stop")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="only the mutants whose names match (repeatable; one target)")
    args = parser.parse_args()
    if args.list:
        print("\n".join(TARGETS))
        return
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        raise SystemExit(f"unknown target(s) {', '.join(unknown)}; targets: {', '.join(TARGETS)}")
    if args.only and len(args.targets) != 1:
        raise SystemExit("--only names mutants of one target: give exactly one")
    OUT.mkdir(exist_ok=True)
    summary_path = OUT / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in args.targets or list(TARGETS):
        counts: dict[str, Any] = run(name, args.only)
        if args.only:  # a part of the target: the counts say which
            counts["only"] = args.only
        summary[name] = counts
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"{name}: {counts}; survivors in {OUT / name / 'survivors.txt'}")


if __name__ == "__main__":
    main()
