"""Stop `kdcore run` with a signal early in a run, many times, and count how each stop ended.

    .venv/bin/python benchmarks/signal_trials.py --trials 12 --signal both
    .venv/bin/python benchmarks/signal_trials.py --trials 12 --kdcore-root /tmp/old-checkout

Each trial starts `kdcore run recipes/ce.toml` (digits, 200 training samples, so that much of
an epoch is the history's row) in a session of its own, waits for its second epoch line in
`log.txt`, sleeps a random 0-50 ms, sends the signal and waits for the process to end. A stop
is clean when it exits 143 (SIGTERM) or 130 (SIGINT) within 30 s with one line on stderr and no
"Exception ignored"; anything else is printed whole. `--kdcore-root` runs the kdcore found
there (an older checkout, `git worktree add /tmp/old-checkout COMMIT`) with this environment's
packages and plugins.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def trial(out: Path, signum: int, env: dict[str, str], rng: random.Random,
          overrides: list[str]) -> str:
    cmd = [sys.executable, "-m", "kdcore.cli", "run", str(ROOT / "recipes" / "ce.toml"),
           "--out", str(out), "-q", "--set", "stages.student.epochs=3000",
           "--set", "data.train_subset=200"]
    for override in overrides:
        cmd += ["--set", override]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True, cwd=out.parent)
    log = out / "log.txt"
    while not (log.is_file() and "student 2/" in log.read_text(errors="replace")):
        if proc.poll() is not None:
            return f"ended before the signal: exit {proc.returncode}"
        time.sleep(0.002)
    time.sleep(rng.random() * 0.05)
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return "not stopped within 30 s (killed)"
    lines = stderr.strip().splitlines()
    clean = (proc.returncode == 128 + signum and len(lines) == 1
             and "Exception ignored" not in stderr)
    took = time.monotonic() - sent
    return (f"clean in {took:.1f} s" if clean else
            f"exit {proc.returncode} after {took:.1f} s: " + " | ".join(lines[-4:])[-300:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--signal", choices=("TERM", "INT", "both"), default="TERM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kdcore-root", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="more --set values for the runs "
                        "(run.checkpoint_interval_s=0: a checkpoint every epoch)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.kdcore_root is not None:
        env["PYTHONPATH"] = str(args.kdcore_root.resolve())
    rng = random.Random(args.seed)
    signals = {"TERM": [signal.SIGTERM], "INT": [signal.SIGINT],
               "both": [signal.SIGTERM, signal.SIGINT]}[args.signal]
    clean = 0
    with tempfile.TemporaryDirectory() as tmp:  # run from there: not this checkout's kdcore/
        where = subprocess.run([sys.executable, "-c", "import kdcore; print(kdcore.__file__)"],
                               env=env, capture_output=True, text=True, check=True,
                               cwd=tmp).stdout.strip()
        print(f"kdcore from {where}")
        for k in range(args.trials):
            signum = signals[k % len(signals)]
            outcome = trial(Path(tmp) / f"r{k}", signum, env, rng, args.overrides)
            clean += outcome.startswith("clean")
            print(f"trial {k} {signal.Signals(signum).name}: {outcome}", flush=True)
    print(f"{clean} of {args.trials} stops clean")


if __name__ == "__main__":
    main()
