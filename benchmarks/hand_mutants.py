"""Hand-written mutants of engine features too small for a mutmut target, each run against the
feature's own tests in a copy of the repository: killed or survived.

Each mutant is an explicit textual patch checked to match the current code exactly once (as in
``why_mutants.py``, whose copy, environment and patching this reuses): a refactor that moves
the line stops the script instead of letting it test nothing. The copy's tests run unmutated
first; then, per mutant, only the feature's test files (seconds, not the whole suite).

Usage:  .venv/bin/python benchmarks/hand_mutants.py [--list] [KEY ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

_spec = importlib.util.spec_from_file_location("kdcore_why_mutants", Path(__file__).with_name(
    "why_mutants.py"))
assert _spec is not None and _spec.loader is not None
why = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = why  # dataclasses look their module up while building the class
_spec.loader.exec_module(why)
Mutant = why.Mutant

CACHED = ("tests/test_cached_outputs.py",)
"""``models.<role>.cache_outputs`` (session 14)."""

CONFUSION = ("tests/test_confusion.py", "tests/test_figures.py")
"""The test confusion matrices and their figure (session 14). Two mutants are left out as
equivalent: the stage end's fallback pass taken always, or the keeper's matrix never stored
(both predict the kept weights' test split again, to the same matrix, only slower)."""

CLI_INPUT = ("tests/test_cli_option_fuzz.py", "-k", "not every_option",
             "tests/test_ablate_input.py::test_a_grid_into_a_runs_own_folder_is_refused",
             "tests/test_ablate_report.py::"
             "test_a_variant_folder_whose_name_is_not_utf8_is_reported_escaped")
"""What the option fuzz found (session 16), by the tests that pin each fix (not the fuzz itself,
whose draws may miss one). One fix is left out: the escaping of click's own usage errors
(click quotes the values it names with their escapes already)."""

GROUP_TIMEOUT = ("tests/test_distributed.py", "-k", "reader_stops_before_the_group_timeout")
"""``run.distributed_timeout_s`` and rank 0's wait for a reader under it (session 29): the
engine's wiring, run by the two-process test only (each mutant waits out its 120 s)."""

PROVENANCE = ("tests/test_provenance.py", "tests/test_engine_start.py",
              "tests/test_ablate_input.py")
"""Which recipe and code made a run (session 29): the engine's record and resume warning, the
grid's and the report's comparisons."""

MUTANTS: list[tuple[Mutant, tuple[str, ...]]] = [(Mutant(key, what, "kdcore", path, a, b), tests)
                                                 for key, what, path, a, b, tests in [
    ("c1", "stored rows never read (the role is run as before)", "kdcore/batch.py",
     "            if full is None:\n                cached",
     "            if full is not None:\n                cached", CACHED),
    ("c2", "the stored pass's first rows instead of the batch's", "kdcore/batch.py",
     "rows = self.index.to(out.logits.device)", "rows = torch.arange(len(self.index))", CACHED),
    ("c3", "the whole stored features instead of the batch's rows", "kdcore/batch.py",
     "out.features[rows])", "out.features)", CACHED),
    ("c4", "trained roles stored too", "kdcore/loop.py",
     "if models[r].cache_outputs and r not in cfg.train", "if models[r].cache_outputs", CACHED),
    ("c5", "every frozen role stored, asked or not", "kdcore/loop.py",
     "if models[r].cache_outputs and r not in cfg.train", "if r not in cfg.train", CACHED),
    ("c6", "the stored pass over the test split", "kdcore/loop.py",
     'run.features, r, "train")', 'run.features, r, "test")', CACHED),
    ("c7", "the batch not handed the stored outputs", "kdcore/loop.py",
     "targets_from=base, stored=self._stored)", "targets_from=base)", CACHED),
    ("c8", "a disabled role's key checked", "kdcore/plan.py",
     "if not (cfg.enabled and cfg.cache_outputs):", "if not cfg.cache_outputs:", CACHED),
    ("c9", "augmentation check inverted", "kdcore/plan.py",
     "        if recipe.data.augment:\n", "        if not recipe.data.augment:\n", CACHED),
    ("c10", "refused where any stage trains the role", "kdcore/plan.py",
     "if all(role in stage.train", "if any(role in stage.train", CACHED),
    ("c11", "the plan's check not called", "kdcore/plan.py",
     "    _check_cached_outputs(recipe)\n", "", CACHED),
    ("m1", "the confusion matrix transposed", "kdcore/evaluation.py",
     "torch.bincount(truth[kept] * c + pred[kept],",
     "torch.bincount(pred[kept] * c + truth[kept],", CONFUSION),
    ("m2", "a stage keeping its best epoch records its last epoch's matrix",
     "kdcore/evaluation.py", 'field = "last_test_confusion" if stage.keep == "last" else',
     'field = "last_test_confusion" if stage.keep != "last" else', CONFUSION),
    ("m3", "the figure reads the first stage that trained the model", "kdcore/figures/classes.py",
     'h.data(f"{PREFIX}{last[-1]}/', 'h.data(f"{PREFIX}{last[0]}/', CONFUSION),
    ("m4", "the figure's recall over predicted, not true, counts", "kdcore/figures/classes.py",
     "np.diag(m) / m.sum(1)", "np.diag(m) / m.sum(0)", CONFUSION),
    ("u1", "printable returns every text as it is", "kdcore/errors.py",
     "    if text.isprintable():\n        return text\n", "    if True:\n        return text\n",
     CLI_INPUT),
    ("u2", "an error line quotes the message unescaped", "kdcore/cli_common.py",
     "{printable(str(exc))}", "{exc}", CLI_INPUT),
    ("u3", "the CLI's streams left strict", "kdcore/cli.py",
     'stream.reconfigure(errors="backslashreplace")', "pass", CLI_INPUT),
    ("u4", "log.txt written strictly", "kdcore/engine.py",
     'level="INFO", encoding="utf-8", errors="backslashreplace")', 'level="INFO")', CLI_INPUT),
    ("u5", "a variant name's bytes counted by encoding it strictly", "kdcore/grid.py",
     "len(os.fsencode(name)) > 200", "len(name.encode()) > 200", CLI_INPUT),
    ("u6", "a grid's --out not checked before its runs", "kdcore/grid.py",
     "    check_output_dir(out)  # a name the system refuses (too long) is one line here\n", "",
     CLI_INPUT),
    ("u7", "a grid into a run's own folder allowed", "kdcore/grid.py",
     "    if held:", "    if False:", CLI_INPUT),
    ("u8", "a run's --out not checked before its files are", "kdcore/rundir.py",
     "    check_output_dir(run_dir)  # a name the system refuses is one line, before any file "
     "test\n", "", CLI_INPUT),
    ("u9", "variant labels not escaped", "kdcore/report.py",
     "RunResult(run_dir, variant_label(variant), read_summary(s))",
     "RunResult(run_dir, variant, read_summary(s))", CLI_INPUT),
    ("u10", "--baseline and --ceiling not escaped like the labels", "kdcore/cli_report.py",
     "rp.variant_label(v) for v in", "v for v in", CLI_INPUT),
    ("u11", "a report warning quotes its values unescaped", "kdcore/cli_report.py",
     "{printable(line)}", "{line}", CLI_INPUT),
    ("u12", "text output files written strictly", "kdcore/cli_files.py",
     'encoding="utf-8",\n                      errors="backslashreplace")', 'encoding="utf-8")',
     CLI_INPUT),
    ("t1", "the recipe's process-group timeout not passed to torch", "kdcore/distributed.py",
     "timeout = group_timeout(backend, timeout_s)", "timeout = group_timeout(backend)",
     GROUP_TIMEOUT),
    ("t2", "the engine's session without the recipe's timeout", "kdcore/engine.py",
     "distributed.session(device.type, timeout_s)", "distributed.session(device.type)",
     GROUP_TIMEOUT),
    ("t3", "rank 0 warns after the writer's own minute, whatever the timeout",
     "kdcore/engine.py", "history.lock_timeout_s, history.reader_wait_s = distributed",
     "_, history.reader_wait_s = distributed", GROUP_TIMEOUT),
    ("p1", "a history without the code's digests", "kdcore/engine.py",
     '"code": code_digests(recipe, host)}', '}', PROVENANCE),
    ("p2", "a resume after an edit says nothing", "kdcore/engine.py",
     "changed = main and code_changes(", "changed = False and code_changes(", PROVENANCE),
    ("p3", "a grid does not compare the code of the runs it keeps", "kdcore/grid.py",
     "other_code[spec.out] = changed", "pass", PROVENANCE),
    ("p4", "a grid compares the code of runs not there yet only", "kdcore/grid.py",
     'if status(spec) != "new":', 'if status(spec) == "new":', PROVENANCE),
    ("p5", "a report does not compare its runs' code", "kdcore/cli_report.py",
     "rp.mixed_noise(shown, baseline, ceiling),\n                         "
     "mixed_code([r.path for r in shown])]",
     "rp.mixed_noise(shown, baseline, ceiling)]",
     PROVENANCE),
]]

AWE_CONFIGURE = ("plugins/kdcore-awe/tests/test_awe_params.py",)
"""AWE's check of its WeightNet's weight decay at the student's rate (session 47): the plugin's
``kdcore_configure``, which mutmut leaves alone (it mutates no decorated function)."""

_AWE_INIT = "plugins/kdcore-awe/kdcore_awe/__init__.py"
MUTANTS += [(Mutant(key, what, "kdcore-awe", _AWE_INIT, a, b), AWE_CONFIGURE)
            for key, what, a, b in [
    ("a1", "an lr = 0 entry not checked", "if params.loss_mode != \"learned\" or params.lr or",
     "if True or"),
    ("a2", "checked whatever its loss mode", "if params.loss_mode != \"learned\" or params.lr",
     "if params.lr"),
    ("a3", "the student's base rate, not its highest", "check_decay(model.highest_lr(epochs),",
     "check_decay(model.optimizer.lr,"),
    ("a4", "the student's highest rate over the whole run, not by the entry's stage's end",
     "recipe.stages[:s + 1] if", "recipe.stages if"),
    ("a5", "the epochs of every stage up to the entry's, not the student's",
     "if params.student in st.train)", ")"),
    ("a6", "the default momentum's bound, not the entry's", "decay_bound(params.momentum)",
     "decay_bound(0.9)"),
    ("a7", "a disabled entry checked", "if comp.use != \"awe\" or not comp.enabled:",
     "if comp.use != \"awe\":"),
    ("a8", "the problems found, then dropped", "return problems or None", "return None"),
]]


def _copied(targets: set[str]) -> list[str]:
    """The package folders of ``targets`` other than kdcore, as the copy holds them."""
    return sorted(why.mutants.TARGETS[t][0] for t in targets if t != "kdcore")


def run(where: Path, tests: tuple[str, ...], packages: Sequence[str] = ()) -> str:
    env = why.environment(where, ".")
    # the copy's plugin packages first: their entry points load the module by name
    env["PYTHONPATH"] = os.pathsep.join([*(str(where / p) for p in packages),
                                         env["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", *tests], cwd=where,
                          env=env, capture_output=True, text=True,
                          errors="replace",  # a test path or name holding a non-UTF-8 byte
                          timeout=why.TIMEOUT_S)
    return {0: "passed", 1: "failed"}.get(proc.returncode, f"error {proc.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", nargs="*", help="only these mutants (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = parser.parse_args()
    for m, _ in MUTANTS:
        m.line()  # every snippet matches the current code once
    unknown = set(args.keys) - {m.key for m, _ in MUTANTS}
    if unknown:
        raise SystemExit(f"no such mutant: {', '.join(sorted(unknown))} (--list names them)")
    chosen = [(m, t) for m, t in MUTANTS if not args.keys or m.key in args.keys]
    if args.list:
        for m, _ in chosen:
            print(f"{m.key:4} {m.path}:{m.line()}  {m.what}")
        return
    survived = []
    with tempfile.TemporaryDirectory(prefix="hand_mutants_") as tmp:
        where = Path(tmp) / "repo"
        targets = {m.target for m, _ in chosen} - {"kdcore"}
        why.build_copy(where, sorted(targets))
        packages = _copied(targets)
        for tests in dict.fromkeys(t for _, t in chosen):
            if (outcome := run(where, tests, packages)) != "passed":
                raise SystemExit(f"unmutated {' '.join(tests)}: {outcome}")
        for m, tests in chosen:
            original = why.apply(where, m)
            try:
                outcome = run(where, tests, packages)
            finally:
                (where / m.path).write_text(original)
            if outcome.startswith("error"):
                raise SystemExit(f"mutant {m.key}: pytest could not run ({outcome})")
            print(f"{m.key:4} {m.path}:{m.line()}  {m.what}: "
                  f"{'survived' if outcome == 'passed' else 'killed'}", flush=True)
            if outcome == "passed":
                survived.append(m.key)
    if survived:
        raise SystemExit(f"survived: {', '.join(survived)}")


if __name__ == "__main__":
    main()
