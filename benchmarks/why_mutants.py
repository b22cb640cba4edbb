"""The one-line bugs listed under 'Why' in issue #15, each applied to a copy of the repository
and run against its plugin's tests: killed or survived.

Each mutant is an explicit textual patch (a file, its exact original snippet, the replacement),
checked to match the current code exactly once, so a refactor that moves or rewrites the line
stops this script instead of letting it test nothing. Where the issue's one-line description
admits more than one line (a default or the line that uses it), each reading is its own
mutant (``1a``, ``1b``, ...).

The copy (a temporary directory) holds ``kdcore/``, ``tests/``, ``pyproject.toml`` and
``recipes/`` of the working tree and, under ``plugins/``, the packages the mutants touch, each
copied by :func:`mutants.copy_package` (``benchmarks/mutants.py``); the tests run there with
the copy first on ``PYTHONPATH``, which shadows the editable installs (their finders come after
the path on ``sys.meta_path``), and without writing bytecode, so a restored file is never read
from a stale cache. Each plugin's tests first run unmutated in the copy (they must pass, and
the plugin must import from the copy), then once per mutant: any failing test kills it.

Usage:  .venv/bin/python benchmarks/why_mutants.py [KEY ...] [--out PATH] [--list]
(no key: all of them, about six minutes on 2 cores; the table goes to
benchmarks/results/why_mutants.md, and docs/mutation.md quotes it)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kdcore_mutants", Path(__file__).with_name(
    "mutants.py"))
assert _spec is not None and _spec.loader is not None
mutants = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutants)

TIMEOUT_S = 900  # per pytest run; a mutant that hangs the tests counts as killed


@dataclass(frozen=True)
class Mutant:
    """One deliberate bug: ``original`` (exactly once in ``path``) becomes ``replacement``.

    Attributes:
        key: its name here (the issue's item number, a letter per reading).
        what: the issue's description (and which reading).
        target: the package, a key of ``mutants.TARGETS``.
        path: the file, relative to the repository.
        original, replacement: the snippet and what replaces it.
        extra_tests: tests under ``tests/`` (or of another plugin) to run besides the
            package's own ``tests/``, relative to the repository.
    """

    key: str
    what: str
    target: str
    path: str
    original: str
    replacement: str
    extra_tests: tuple[str, ...] = ()

    @property
    def package(self) -> str:
        return mutants.TARGETS[self.target][0]

    def line(self, root: Path = ROOT) -> int:
        """The line of ``root / path`` where ``original`` starts (checks it occurs once)."""
        text = (root / self.path).read_text()
        count = text.count(self.original)
        if count != 1:
            raise SystemExit(f"mutant {self.key}: its original snippet occurs {count} times in "
                             f"{self.path} (the code changed: update the mutant)\n"
                             f"  {self.original!r}")
        return text[:text.index(self.original)].count("\n") + 1


AMLKD = "plugins/kdcore-amlkd/kdcore_amlkd/losses.py"
LP = "plugins/kdcore-lp/kdcore_lp/component.py"
LP_PROP = "plugins/kdcore-lp/kdcore_lp/propagation.py"
SELECTION = "plugins/kdcore-selection/kdcore_selection/small_loss.py"
AWE = "plugins/kdcore-awe/kdcore_awe/awe.py"
ALMKD = "plugins/kdcore-almkd/kdcore_almkd/component.py"
MLC = "plugins/kdcore-mlc/kdcore_mlc/mlc.py"

MUTANTS: list[Mutant] = [
    # 1. MixupCE/MixupKD at temperature 1
    Mutant("1a", "MixupCE/MixupKD at temperature 1: the shared default 4 -> 1", "kdcore-amlkd",
           AMLKD, "temperature: float = attrs.field(default=4.0, validator=softmax_temperature)",
           "temperature: float = attrs.field(default=1.0, validator=softmax_temperature)"),
    Mutant("1b", "MixupCE at temperature 1: its logits not divided by T", "kdcore-amlkd", AMLKD,
           "z = _mixed_out(batch, role, mix).logits / self.params.temperature",
           "z = _mixed_out(batch, role, mix).logits / 1.0"),
    Mutant("1c", "MixupKD at temperature 1: kd_kl given T = 1", "kdcore-amlkd", AMLKD,
           "kd_kl(_mixed_out(batch, r, mix).logits, teacher, self.params.temperature)",
           "kd_kl(_mixed_out(batch, r, mix).logits, teacher, 1.0)"),
    # 2. lambda and 1 - lambda swapped
    Mutant("2a", "lambda and 1 - lambda swapped in the mixup CE's two label terms",
           "kdcore-amlkd", AMLKD,
           "out[role] = mix.lam * soft_cross_entropy(z, y) + (1 - mix.lam) * soft_cross_entropy(",
           "out[role] = (1 - mix.lam) * soft_cross_entropy(z, y) + mix.lam * soft_cross_entropy("),
    Mutant("2b", "lambda and 1 - lambda swapped in the mixed inputs", "kdcore-amlkd", AMLKD,
           "mix = Mix(lam * batch.x + (1 - lam) * batch.x[perm], lam, perm)",
           "mix = Mix((1 - lam) * batch.x + lam * batch.x[perm], lam, perm)"),
    # 3. the teacher fed the clean view
    Mutant("3", "MixupKD's teacher fed the clean view instead of the mixed one", "kdcore-amlkd",
           AMLKD, "teacher = _mixed_out(batch, self.params.teacher, mix).logits.detach()",
           "teacher = batch.out(self.params.teacher).logits.detach()"),
    # 4. LP seeded from the refined targets instead of the selected noisy labels
    Mutant("4a", "LP's selected seeds take the refined target (argmax of base_target) where "
           "the noisy label was selected", "kdcore-lp", LP,
           'return torch.where(mask, ctx.ledger["noisy_label"], pred)',
           'return torch.where(mask, ctx.ledger["base_target"].argmax(1), pred)'),
    Mutant("4b", "LP's default seeds 'selected' -> 'previous' (the refined targets)",
           "kdcore-lp", LP,
           'seeds: Literal["teacher_prediction", "selected", "previous", "noisy"] = "selected"',
           'seeds: Literal["teacher_prediction", "selected", "previous", "noisy"] = "previous"'),
    # 5. LP seed weights ignored
    Mutant("5a", "LP seed weights ignored: the component passes none", "kdcore-lp", LP,
           "weights = self._column(ctx, p.seed_weights).float() if p.seed_weights else None",
           "weights = None"),
    Mutant("5b", "LP seed weights ignored: every seed gets weight 1", "kdcore-lp", LP_PROP,
           "y[torch.arange(n, device=seed_labels.device), seed_labels.long()] = w",
           "y[torch.arange(n, device=seed_labels.device), seed_labels.long()] = 1.0"),
    # 6, 7. LP k and alpha hard-coded
    Mutant("6", "LP k = 10 hard-coded", "kdcore-lp", LP,
           "cache[key] = feature_graph(feats, k=p.k,",
           "cache[key] = feature_graph(feats, k=10,"),
    Mutant("7", "LP alpha = 0.9 hard-coded", "kdcore-lp", LP,
           "alpha=p.alpha, clamp=p.clamp, tol=p.cg_tol",
           "alpha=0.9, clamp=p.clamp, tol=p.cg_tol"),
    # 8. small-loss ranked against the refined targets
    Mutant("8a", "small-loss ranks against the refined targets: default labels 'noisy' -> "
           "'targets'", "kdcore-selection", SELECTION,
           'labels: Literal["noisy", "targets"] = "noisy"',
           'labels: Literal["noisy", "targets"] = "targets"'),
    Mutant("8b", "small-loss ranks against the refined targets under labels = 'noisy'",
           "kdcore-selection", SELECTION,
           'return F.cross_entropy(logits, ctx.ledger["noisy_label"][index], reduction="none")',
           'return soft_cross_entropy(logits, ctx.ledger["target"][index])'),
    # 9. AWE's one-hot input zeroed
    Mutant("9a", "AWE's one-hot input zeroed (where the component calls the WeightNet)",
           "kdcore-awe", AWE, "out = self.net(amb.detach(), one_hot(labels, num_classes))",
           "out = self.net(amb.detach(), 0 * one_hot(labels, num_classes))"),
    Mutant("9b", "AWE's one-hot input zeroed (in WeightNet.forward)", "kdcore-awe", AWE,
           "torch.cat([ambiguity, labels_one_hot], 1)",
           "torch.cat([ambiguity, torch.zeros_like(labels_one_hot)], 1)"),
    # 10. AWE seed prototypes from predictions
    Mutant("10", "AWE's seed prototypes built from the student's predictions instead of the "
           "selected labels", "kdcore-awe", AWE,
           "protos = class_prototypes(feats.features, labels, ctx.num_classes)",
           "protos = class_prototypes(feats.features, feats.logits.argmax(1), ctx.num_classes)"),
    # 11. AWE zero_grad default flipped
    Mutant("11", "AWE's zero_grad default flipped (true -> false)", "kdcore-awe", AWE,
           "zero_grad: bool = True", "zero_grad: bool = False"),
    # 12, 13. ALM-KD
    Mutant("12", "ALM-KD's look-ahead learning rate fixed at 0.05", "kdcore-almkd", ALMKD,
           "lr=ctx.lr(self.student),", "lr=0.05,"),
    Mutant("13", "ALM-KD's gold labels shuffled (a fixed permutation)", "kdcore-almkd", ALMKD,
           'labels = meta.y if split == "gold" else ctx.data.val_noisy',
           'labels = meta.y[torch.randperm(len(meta.y), generator=torch.Generator()'
           '.manual_seed(0))] if split == "gold" else ctx.data.val_noisy'),
    # 14. MLC without the detach on the LCN's input
    Mutant("14", "MLC: the detach on the label-correction network's input removed",
           "kdcore-mlc", MLC, "features = batch.out(self.model).features.detach()",
           "features = batch.out(self.model).features"),
]


# -- the copy of the repository ---------------------------------------------------------------


def build_copy(where: Path, targets: list[str]) -> None:
    """kdcore, its tests, pyproject.toml and recipes/ of the working tree under ``where``, and
    each target package under ``where / <its package directory>``."""
    mutants.copy_package("kdcore", where)  # kdcore/, tests/, pyproject.toml, recipes/
    for target in targets:
        mutants.copy_package(target, where / mutants.TARGETS[target][0])


def environment(where: Path, package: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(where), str(where / package),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["COLUMNS"] = "400"  # room for the failure's message on pytest's summary lines
    return env


def check_shadowing(where: Path, target: str) -> None:
    """The copy's modules are the ones imported there (not the editable installs)."""
    package, modules, _ = mutants.TARGETS[target]
    module = modules[0].split("/")[0]
    code = (f"import kdcore, importlib; m = importlib.import_module({module!r}); "
            "print(kdcore.__file__); print(m.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=where, env=environment(where, package),
                         capture_output=True, text=True, check=True).stdout.split()
    outside = [f for f in out if not Path(f).resolve().is_relative_to(where.resolve())]
    if outside:
        raise SystemExit(f"{target}: imported from outside the copy: {outside}")


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)
_SUMMARY = re.compile(r"^(?:FAILED|ERROR) .*$", re.MULTILINE)


def run_tests(where: Path, mutant_or_target: Mutant | str) -> tuple[str, list[str], str]:
    """``(outcome, failing test ids, output tail)``; outcome ``passed``, ``failed``,
    ``crashed``, ``timeout`` or ``error`` (pytest could not run the tests)."""
    if isinstance(mutant_or_target, Mutant):
        target, extra = mutant_or_target.target, list(mutant_or_target.extra_tests)
    else:
        target, extra = mutant_or_target, []
    package = mutants.TARGETS[target][0]
    cmd = [sys.executable, "-m", "pytest", f"{package}/tests", *extra, "-rfE"]
    try:
        proc = subprocess.run(cmd, cwd=where, env=environment(where, package),
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "timeout", [], ""
    text = proc.stdout + proc.stderr
    failing = list(dict.fromkeys(m.group(2) for m in _FAILED.finditer(text)))
    if proc.returncode == 0:
        return "passed", [], text[-2000:]
    if proc.returncode == 1:
        return "failed", failing, "\n".join(_SUMMARY.findall(text))
    if proc.returncode < 0:
        return "crashed", failing, text[-2000:]
    return "error", failing, text[-4000:]


def apply(where: Path, mutant: Mutant) -> str:
    """Patch the copy; returns the file's original text (to restore)."""
    path = where / mutant.path
    text = path.read_text()
    mutant.line(where)  # exactly once
    path.write_text(text.replace(mutant.original, mutant.replacement, 1))
    return text


# -- the table --------------------------------------------------------------------------------


def table(results: list[tuple[Mutant, str, list[str]]]) -> str:
    rows = ["| # | mutant | file:line | result | failing tests |", "|---|---|---|---|---|"]
    for m, outcome, failing in results:
        verdict = "**survived**" if outcome == "passed" else (
            "killed" if outcome == "failed" else f"killed ({outcome})")
        where = f"`{m.path}:{m.line()}`"
        shown = ", ".join(f"`{t.removeprefix(m.package + '/')}`" for t in failing[:3])
        if len(failing) > 3:
            shown += f" and {len(failing) - 3} more"
        rows.append(f"| {m.key} | {m.what} | {where} | {verdict} | {shown or '-'} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "why_mutants.md", help="where a run of every mutant writes its table "
                        "(default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = parser.parse_args()
    known = {m.key: m for m in MUTANTS}
    for m in MUTANTS:
        m.line()  # every snippet matches the current code once
    if args.list:
        for m in MUTANTS:
            print(f"{m.key:4} {m.path}:{m.line()}  {m.what}")
        return
    unknown = [k for k in args.keys if k not in known]
    if unknown:
        raise SystemExit(f"unknown mutant(s) {', '.join(unknown)}; --list names them")
    chosen = [known[k] for k in args.keys] if args.keys else MUTANTS
    targets = list(dict.fromkeys(m.target for m in chosen))
    results: list[tuple[Mutant, str, list[str]]] = []
    with tempfile.TemporaryDirectory(prefix="why_mutants_") as tmp:
        where = Path(tmp) / "repo"
        build_copy(where, targets)
        for target in targets:
            check_shadowing(where, target)
            outcome, failing, tail = run_tests(where, target)
            if outcome != "passed":
                raise SystemExit(f"{target}: the unmutated tests do not pass in the copy "
                                 f"({outcome}: {failing}):\n{tail}")
            print(f"{target}: unmutated tests pass in the copy", flush=True)
            for m in [m for m in chosen if m.target == target]:
                original = apply(where, m)
                try:
                    outcome, failing, tail = run_tests(where, m)
                finally:
                    (where / m.path).write_text(original)
                if outcome == "error":
                    raise SystemExit(f"mutant {m.key}: pytest could not run:\n{tail}")
                results.append((m, outcome, failing))
                print(f"{m.key}: {'survived' if outcome == 'passed' else 'killed'} "
                      f"({len(failing)} failing)", flush=True)
                for line in _SUMMARY.findall(tail)[:3]:  # why, for the reader
                    print(f"    {line[:160]}", flush=True)
    results.sort(key=lambda r: MUTANTS.index(r[0]))
    text = table(results)
    if not args.keys:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("Issue #15's one-line mutants (`.venv/bin/python "
                            "benchmarks/why_mutants.py`)\n\n" + text)
        print(f"table written to {args.out}")
    print(text)
    survived = [m.key for m, outcome, _ in results if outcome == "passed"]
    if survived:
        print(f"survived: {', '.join(survived)}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
