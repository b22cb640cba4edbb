"""A real full disk: ``kdcore run`` into a small tmpfs that fills at a chosen point, then the
same folder given room and ``--resume``d: does the run stop in one line, keep what it had
written, and end bit for bit equal to the uninterrupted run?

tests/ simulate ``ENOSPC`` by making one write fail (tests/test_history_journal.py,
tests/test_cli_files.py); here the kernel refuses the bytes wherever they happen to be going
(the history's journal, its rebuild, a checkpoint, the weights, ``summary.json``). For each
``--sizes`` entry: a tmpfs of that size is mounted, the recipe run into it (it must exit 2
with one ``kdcore: error:`` line and no traceback, or finish when the disk was large enough),
the tmpfs enlarged to 64 MiB in place (``mount -o remount``: the files stay), the run resumed
(or started again where it stopped before its first checkpoint, as its refusal says), and its
history and ``summary.json`` compared with a reference run's. Needs root (``mount``) on Linux.

Usage:  sudo .venv/bin/python benchmarks/disk_full.py [--recipe recipes/ce.toml]
            [--sizes 200k 700k 1100k 1500k 1700k]
Prints one line per size and a count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from kdcore.testing import assert_same_history

KDCORE = str(Path(sys.executable).parent / "kdcore")


def kdcore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KDCORE, *args, "--quiet"], capture_output=True, text=True)


def mount(where: Path, size: str, *, remount: bool = False) -> None:
    options = f"{'remount,' if remount else ''}size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)


def one_size(recipe: str, ref: Path, disk: Path, size: str) -> tuple[bool, str]:
    """Fill a ``size`` tmpfs with a run, resume it with room; (equal to ``ref``, what happened)."""
    mount(disk, size)
    try:
        out = disk / "run"
        first = kdcore("run", recipe, "--out", str(out))
        lines = first.stderr.strip().splitlines()
        if first.returncode == 0:
            how = "finished on the small disk"
        elif first.returncode != 2 or "Traceback" in first.stderr or not lines or \
                not lines[-1].startswith("kdcore: error: "):
            return False, f"exit {first.returncode}, not one line: {first.stderr[-400:]}"
        else:
            how = f"stopped: {lines[-1][len('kdcore: error: '):][:150]}"
        mount(disk, "64m", remount=True)
        again = kdcore("run", recipe, "--out", str(out), "--resume")
        if again.returncode == 2 and "nothing to resume" in again.stderr:
            how += "; nothing to resume, started again with --overwrite"
            again = kdcore("run", recipe, "--out", str(out), "--overwrite")
        if again.returncode != 0:
            return False, f"{how}; resume exit {again.returncode}: {again.stderr[-300:]}"
        assert_same_history(ref, out)
        same = (json.loads((ref / "summary.json").read_text())
                == json.loads((out / "summary.json").read_text()))
        return same, how + ("" if same else "; another summary")
    except AssertionError as exc:
        return False, f"{how}; history differs: {str(exc)[:300]}"
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/ce.toml")
    parser.add_argument("--sizes", nargs="+", default=["200k", "700k", "1100k", "1500k", "1700k"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reference"
        kdcore("run", args.recipe, "--out", str(ref)).check_returncode()
        disk = Path(tmp) / "disk"
        disk.mkdir()
        equal = 0
        for size in args.sizes:
            same, how = one_size(args.recipe, ref, disk, size)
            equal += same
            print(f"{size}: {how}; resumed {'bit for bit' if same else 'NOT equal'}", flush=True)
        print(f"{equal} of {len(args.sizes)} runs stopped by a full disk ended equal to the "
              "reference")


if __name__ == "__main__":
    main()
