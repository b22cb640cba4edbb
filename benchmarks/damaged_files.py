"""A run's files damaged on disk, then ``--resume``: is every outcome either the uninterrupted
run bit for bit, or one line with exit 2, and never a run that silently goes on from other
numbers?

A reference run of ``--recipe`` (digits CE, 6 epochs, a checkpoint every epoch so that the
run keeps one before its last), and a copy cut at epoch 3 (an interrupt in its fourth epoch);
then, ``--cases`` times per file, a fresh copy of the cut run whose ``checkpoint.pt`` or
``history.h5`` gets one of: 1 or 4 flipped bits, a zeroed block of 512 bytes, or a truncation,
each at a seeded random place; ``kdcore run --resume`` (in process, click's runner), and its
history compared with the reference's (``kdcore.testing.assert_same_history``).

Usage:  .venv/bin/python benchmarks/damaged_files.py [--cases 30] [--seed 0]
Prints one line per case and the counts per file and outcome: ``same`` (resumed, bit for bit),
``refused`` (exit 2, one line), ``DIFFERENT`` or ``CRASH`` (either is a bug).
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from click.testing import CliRunner
from loguru import logger

import kdcore
from kdcore.cli import main as cli
from kdcore.testing import InterruptAt, Interrupted, assert_same_history

RECIPE = Path(__file__).parents[1] / "recipes" / "ce.toml"
SETS = ["stages.student.epochs=6", "run.checkpoint_interval_s=0"]


def damaged(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    raw = bytearray(data)
    kind = rng.choice(["flip", "zero", "truncate"])
    if kind == "flip":
        for _ in range(rng.choice([1, 4])):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif kind == "zero":
        at = rng.randrange(len(raw))
        raw[at:at + 512] = bytes(len(raw[at:at + 512]))
    else:
        del raw[rng.randrange(len(raw)):]
    return kind, bytes(raw)


def outcome(run_dir: Path, reference: Path) -> tuple[str, str]:
    result = CliRunner().invoke(cli, ["run", str(RECIPE), "--out", str(run_dir), "--resume",
                                      "--no-progress", *sum((["--set", s] for s in SETS), [])])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return "CRASH", repr(result.exception)[:200]
    lines = result.output.strip().splitlines()
    if result.exit_code == 2:
        return "refused", lines[-1][:200]
    if result.exit_code != 0:
        return "CRASH", f"exit {result.exit_code}: {lines[-1][:200] if lines else ''}"
    try:
        assert_same_history(run_dir / "history.h5", reference / "history.h5")
    except AssertionError as exc:
        return "DIFFERENT", " ".join(str(exc).split())[:200]
    return "same", ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=30, help="cases per file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logger.remove()
    counts: Counter[tuple[str, str]] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = kdcore.load_recipe(RECIPE, SETS)
        kdcore.run_recipe(recipe, out=str(root / "reference"), progress=False, overrides=SETS)
        try:
            kdcore.run_recipe(recipe, out=str(root / "cut"), progress=False, overrides=SETS,
                              host=kdcore.PluginHost(extra=[InterruptAt(3, 5)]))
        except Interrupted:
            pass
        for name in ("checkpoint.pt", "history.h5"):
            clean = (root / "cut" / name).read_bytes()
            for case in range(args.cases):
                rng = random.Random(f"{args.seed}/{name}/{case}")
                run_dir = root / "case"
                shutil.rmtree(run_dir, ignore_errors=True)
                shutil.copytree(root / "cut", run_dir)
                kind, data = damaged(clean, rng)
                (run_dir / name).write_bytes(data)
                result, line = outcome(run_dir, root / "reference")
                counts[name, result] += 1
                print(f"{name} case {case} ({kind}): {result}{': ' + line if line else ''}",
                      flush=True)
    for (name, result), n in sorted(counts.items()):
        print(f"{name}: {result} {n}")


if __name__ == "__main__":
    main()
