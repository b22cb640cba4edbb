"""Write docs/results.md from finished grids: one table per grid, with the noise-gap recovery.

Usage:  .venv/bin/python benchmarks/results_doc.py [--out docs/results.md]
Reads the grid directories listed in SECTIONS (made by `kdcore ablate`, see each grid's command);
a grid that has not been run is listed as such, never invented.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdcore.errors import KdcoreError
from kdcore.report import aggregate, find_runs, markdown_table

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = [
    ("Baselines on digits (40% symmetric noise)",
     "kdcore ablate recipes/ce.toml recipes/kd.toml recipes/clean.toml --seeds 0,1,2 "
     "--out runs/digits-baselines",
     "runs/digits-baselines", "ce", "clean"),
    ("AML-KD on Fashion-MNIST, 40% symmetric noise",
     "kdcore ablate --grid benchmarks/grids/amlkd-fmnist-sym.toml --out runs/amlkd-fmnist-sym",
     "runs/amlkd-fmnist-sym", "ce", "clean"),
    ("AML-KD on Fashion-MNIST, 40% pair-flip noise",
     "kdcore ablate --grid benchmarks/grids/amlkd-fmnist-pair.toml --out runs/amlkd-fmnist-pair",
     "runs/amlkd-fmnist-pair", "ce", "clean"),
    ("SMKD and DML on Fashion-MNIST, 40% symmetric noise (peer_a, MLP [64], is the student)",
     "kdcore ablate --grid benchmarks/grids/smkd-fmnist-sym.toml --out runs/smkd-fmnist-sym",
     "runs/smkd-fmnist-sym", None, None),
    ("SMKD and DML on Fashion-MNIST, 40% pair-flip noise (peer_a, MLP [64], is the student)",
     "kdcore ablate --grid benchmarks/grids/smkd-fmnist-pair.toml --out runs/smkd-fmnist-pair",
     "runs/smkd-fmnist-pair", None, None),
    ("ALM-KD and AMAL on Fashion-MNIST, 40% symmetric noise (1,000 gold images held out)",
     "kdcore ablate --grid benchmarks/grids/almkd-fmnist-sym.toml --out runs/almkd-fmnist-sym",
     "runs/almkd-fmnist-sym", None, None),
    ("ALM-KD and AMAL on Fashion-MNIST, 40% pair-flip noise (1,000 gold images held out)",
     "kdcore ablate --grid benchmarks/grids/almkd-fmnist-pair.toml --out runs/almkd-fmnist-pair",
     "runs/almkd-fmnist-pair", None, None),
    ("F&F on the nCIFAR-style Fashion-MNIST set (fmnist-lt: open, closed noise, long tail)",
     "kdcore ablate --grid benchmarks/grids/ff-fmnist.toml --out runs/ff-fmnist",
     "runs/ff-fmnist", None, None),
]

INTRO = """# Results

Every table is produced by `make results` (this script, `benchmarks/results_doc.py`) from runs
that the command under each table makes. Numbers are test accuracy in %, mean ± standard
deviation over seeds, at the epoch of best **validation** accuracy (measured on the noisy
validation labels, as a practitioner must) and at the last epoch; the test set is never used for
model selection. "gap recovered" is (acc - acc_CE) / (acc_clean - acc_CE) of the student at its
best-validation epoch: 0 is plain CE on noisy labels, 1 is the clean-label student.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args()
    parts = [INTRO]
    for title, command, grid, baseline, ceiling in SECTIONS:
        parts.append(f"\n## {title}\n\n```sh\n{command}\n```\n\n")
        try:
            runs = find_runs([ROOT / grid])
        except KdcoreError:
            parts.append("Not run yet.\n")
            continue
        rows = aggregate(runs)
        parts.append(markdown_table(rows, baseline=baseline, ceiling=ceiling,
                                    model="student" if baseline else None))
    args.out.write_text("".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
