"""SIGKILL at random moments of a real ``kdcore run``, then ``--resume``: is every resumed run
bit for bit the uninterrupted one?

tests/test_resume_contract.py kills the AML-KD recipe at chosen points (stage boundaries, a
history write); this campaign kills it where the clock lands, in separate processes as a user's
machine would: a reference run first, then ``--kills`` runs, each killed after a delay drawn
uniformly from ``--delay`` seconds (a run that finished first counts as such), resumed, and its
history (every epoch row, metric and ledger column) and ``summary.json`` compared with the
reference's.

Usage:  .venv/bin/python benchmarks/kill_resume.py [--recipe recipes/amlkd.toml] [--kills 14]
            [--delay 1.8 6.0] [--seed 0]
Prints one line per kill and a count; a run whose resume fails or differs is named.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdcore.testing import assert_same_history

KDCORE = str(Path(sys.executable).parent / "kdcore")


def run(recipe: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([KDCORE, "run", recipe, "--out", str(out), "--quiet", *extra],
                          capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/amlkd.toml")
    parser.add_argument("--kills", type=int, default=14)
    parser.add_argument("--delay", type=float, nargs=2, default=(1.8, 6.0))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reference"
        run(args.recipe, ref).check_returncode()
        same = finished = 0
        for k in range(args.kills):
            out = Path(tmp) / f"kill{k}"
            delay = rng.uniform(*args.delay)
            child = subprocess.Popen([KDCORE, "run", args.recipe, "--out", str(out), "--quiet"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
            child.wait()
            ended = (out / "summary.json").exists()
            finished += ended
            resumed = run(args.recipe, out, "--resume")
            if resumed.returncode != 0:
                print(f"kill {k} at {delay:.2f} s: --resume exit {resumed.returncode}: "
                      f"{resumed.stderr.strip()[-300:]}", flush=True)
                continue
            try:
                assert_same_history(ref, out)
                equal = (json.loads((ref / "summary.json").read_text())
                         == json.loads((out / "summary.json").read_text()))
            except AssertionError as exc:
                print(f"kill {k} at {delay:.2f} s: DIFFERS: {str(exc)[:300]}", flush=True)
                continue
            same += equal
            print(f"kill {k} at {delay:.2f} s: {'after the run ended' if ended else 'mid-run'}, "
                  f"resumed {'bit for bit' if equal else 'with another summary'}", flush=True)
        print(f"{same} of {args.kills} resumed runs equal the reference ({args.kills - finished} "
              "killed mid-run)")


if __name__ == "__main__":
    main()
