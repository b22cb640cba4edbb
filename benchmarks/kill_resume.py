"""SIGKILL at random moments of a real ``kdcore run``, then ``--resume``: is every resumed run
bit for bit the uninterrupted one?

tests/test_resume_contract.py kills the AML-KD recipe at chosen points (stage boundaries, a
history write); this campaign kills it where the clock lands, in separate processes as a user's
machine would: a reference run first, then ``--kills`` runs, each killed after a delay drawn
uniformly from ``--delay`` seconds (a run that finished first counts as such), resumed, and its
history (every epoch row, metric and ledger column) and ``summary.json`` compared with the
reference's.

With ``--nproc N`` every run (reference, killed and resumed) is ``kdcore run --nproc N``, and the
SIGKILL goes to the launcher alone, as the out-of-memory killer would send it: its workers must
die with it (docs/distributed.md) and the resume, in N processes again, must still equal the
reference bit for bit. With ``--compositions K`` the campaign runs on K recipes drawn by
``kdcore.testing.accepted_compositions`` (registered components composed at random after a
teacher stage, their choices and a third of their numbers drawn, 4 epochs a stage, the draws
``kdcore check`` accepts in N processes; ``--seed`` picks them) instead of ``--recipe``,
``--kills`` each, the delay drawn from ``--delay``'s low end to the reference's duration. A run
killed before it began (its folder holds nothing to resume) is started again as the refusal
says, without ``--resume``, and compared the same way. With ``--streamed`` the recipe (one on
digits) reads the first 900 digits as PNG files instead, ``image_folder`` with ``stream = true``
and ``data.workers = 2``: each batch's images are decoded in DataLoader processes that the
SIGKILL leaves without their parent.

Usage:  .venv/bin/python benchmarks/kill_resume.py [--recipe recipes/amlkd.toml] [--kills 14]
            [--delay 1.8 6.0] [--seed 0] [--nproc 1] [--compositions K] [--streamed]
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

from kdcore.testing import accepted_compositions, assert_same_history, write_recipe

KDCORE = str(Path(sys.executable).parent / "kdcore")


def run(recipe: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([KDCORE, "run", recipe, "--out", str(out), "--quiet", *extra],
                          capture_output=True, text=True)


def streamed(recipe: str, folder: Path) -> str:
    """``recipe`` (on digits) reading the first 900 digits as PNG files, ``folder/<class>/``,
    streamed by two DataLoader workers."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:900], digits.target[:900])):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / f"c{label}/{i}.png")
    path = folder.parent / "streamed.toml"
    path.write_text(f"extends = {json.dumps(str(Path(recipe).resolve()))}\n[data]\n"
                    f"dataset = \"image_folder\"\nworkers = 2\n[data.params]\n"
                    f"root = {json.dumps(str(folder))}\nsize = 8\nstream = true\n")
    return str(path)


def campaign(recipe: str, ref: Path, kills: int, delay: tuple[float, float], nproc: list[str],
             rng: random.Random, tag: str) -> tuple[int, int]:
    """``kills`` runs of ``recipe`` killed and resumed against ``ref``; (equal, mid-run)."""
    same = mid_run = 0
    for k in range(kills):
        out = ref.parent / f"{ref.name}-kill{k}"
        wait = rng.uniform(*delay)
        child = subprocess.Popen([KDCORE, "run", recipe, "--out", str(out), "--quiet", *nproc],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(wait)
        child.send_signal(signal.SIGKILL)
        child.wait()
        ended = (out / "summary.json").exists()
        time.sleep(0.5 if nproc else 0)  # the workers see their launcher gone and stop
        resumed = run(recipe, out, "--resume", *nproc)
        how = "after the run ended" if ended else "mid-run"
        if resumed.returncode == 2 and "nothing to resume" in resumed.stderr:
            how = "before the run began, started again"
            resumed = run(recipe, out, *nproc)
        mid_run += how == "mid-run"
        if resumed.returncode != 0:
            print(f"{tag}kill {k} at {wait:.2f} s: --resume exit {resumed.returncode}: "
                  f"{resumed.stderr.strip()[-300:]}", flush=True)
            continue
        try:
            assert_same_history(ref, out)
            equal = (json.loads((ref / "summary.json").read_text())
                     == json.loads((out / "summary.json").read_text()))
        except AssertionError as exc:
            print(f"{tag}kill {k} at {wait:.2f} s: DIFFERS: {str(exc)[:300]}", flush=True)
            continue
        same += equal
        print(f"{tag}kill {k} at {wait:.2f} s: {how}, resumed "
              f"{'bit for bit' if equal else 'with another summary'}", flush=True)
    return same, mid_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/amlkd.toml")
    parser.add_argument("--kills", type=int, default=14)
    parser.add_argument("--delay", type=float, nargs=2, default=(1.8, 6.0))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--compositions", type=int, default=0)
    parser.add_argument("--streamed", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    nproc = ["--nproc", str(args.nproc)] if args.nproc > 1 else []
    with tempfile.TemporaryDirectory() as tmp:
        recipes = [streamed(args.recipe, Path(tmp) / "images") if args.streamed else args.recipe]
        if args.compositions:
            drawn = accepted_compositions(random.Random(args.seed), args.compositions,
                                          choices=True, numbers=True, processes=args.nproc,
                                          epochs=4, train_subset=240, gold_per_class=3)
            recipes = [str(write_recipe(r, Path(tmp) / f"recipe{i}.toml"))
                       for i, r in enumerate(drawn)]
        same = mid_run = 0
        for i, recipe in enumerate(recipes):
            ref = Path(tmp) / f"reference{i}"
            start = time.perf_counter()
            run(recipe, ref, *nproc).check_returncode()
            took = time.perf_counter() - start
            delay = (args.delay[0], max(args.delay[0], took)) if args.compositions else args.delay
            tag = f"recipe {i} ({Path(recipe).name}, {took:.1f} s): " if args.compositions else ""
            equal, mid = campaign(recipe, ref, args.kills, delay, nproc, rng, tag)
            same, mid_run = same + equal, mid_run + mid
        kills = args.kills * len(recipes)
        print(f"{same} of {kills} resumed runs equal the reference ({mid_run} killed mid-run)")


if __name__ == "__main__":
    main()
