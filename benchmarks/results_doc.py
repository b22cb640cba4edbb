"""Write docs/results.md from finished grids: one table per grid, with the noise-gap recovery.

Usage:  .venv/bin/python benchmarks/results_doc.py [--out docs/results.md]
Reads the grid directories listed in SECTIONS (made by `kdcore ablate`, see each grid's command);
a grid that has not been run is listed as such, never invented.
"""

from __future__ import annotations

import argparse
import fnmatch
import statistics
from pathlib import Path

import numpy as np

from kdcore.errors import KdcoreError
from kdcore.history import History
from kdcore.report import RunResult, aggregate, find_runs, markdown_table

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
    ("MLC and KDMLC on Fashion-MNIST, 40% symmetric noise (1,000 gold images held out)",
     "kdcore ablate --grid benchmarks/grids/mlc-fmnist-sym.toml --out runs/mlc-fmnist-sym",
     "runs/mlc-fmnist-sym", None, None),
    ("MLC and KDMLC on Fashion-MNIST, 40% pair-flip noise (1,000 gold images held out)",
     "kdcore ablate --grid benchmarks/grids/mlc-fmnist-pair.toml --out runs/mlc-fmnist-pair",
     "runs/mlc-fmnist-pair", None, None),
    ("LSH feature mimicking on Fashion-MNIST, 40% symmetric noise",
     "kdcore ablate --grid benchmarks/grids/lsh-fmnist-sym.toml --out runs/lsh-fmnist-sym",
     "runs/lsh-fmnist-sym", None, None),
    ("LSH feature mimicking on Fashion-MNIST, 40% pair-flip noise",
     "kdcore ablate --grid benchmarks/grids/lsh-fmnist-pair.toml --out runs/lsh-fmnist-pair",
     "runs/lsh-fmnist-pair", None, None),
    ("F&F on the nCIFAR-style Fashion-MNIST set (fmnist-lt: open, closed noise, long tail)",
     "kdcore ablate --grid benchmarks/grids/ff-fmnist.toml --out runs/ff-fmnist",
     "runs/ff-fmnist", None, None),
]

# per section: history metrics (glob patterns) read at the last epoch where they are finite
EXTRA = {
    "runs/amlkd-fmnist-sym": ["label/acc", "select/small_loss/precision",
                              "select/small_loss/recall"],
    "runs/amlkd-fmnist-pair": ["label/acc", "select/small_loss/precision",
                               "select/small_loss/recall"],
    "runs/smkd-fmnist-sym": ["select/*/peer_a/fraction", "select/*/peer_a/precision"],
    "runs/smkd-fmnist-pair": ["select/*/peer_a/fraction", "select/*/peer_a/precision"],
    "runs/ff-fmnist": ["select/instance_filter/open_precision",
                       "select/instance_filter/open_recall", "label/acc"],
}
LAMBDA_SECTIONS = {"runs/almkd-fmnist-sym", "runs/almkd-fmnist-pair"}


def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else float("nan")


def extra_table(runs: list[RunResult], patterns: list[str]) -> str:
    """Mean ± std over seeds of history metrics at their last measured epoch, per variant."""
    values: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        with History(run.path) as h:
            for name in h.metric_names():
                if any(fnmatch.fnmatch(name, p) for p in patterns):
                    values.setdefault((run.variant, name), []).append(_last_finite(h.metric(name)))
    if not values:
        return ""
    lines = ["| variant | history metric (last epoch) | mean ± std |", "|---|---|---|"]
    for (variant, name), vals in values.items():
        vals = [v for v in vals if v == v]
        if not vals:
            continue
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"| {variant} | `{name}` | {statistics.fmean(vals):.4f} ± {std:.4f} |")
    return "\n" + "\n".join(lines) + "\n"


def lambda_table(runs: list[RunResult]) -> str:
    """The KD share of the per-sample weights on truly noisy against clean samples, at the
    first and the last epoch of the table (kdcore_almkd.analysis), mean ± std over seeds."""
    from kdcore_almkd.analysis import lambda_by_noise

    acc: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        with History(run.path) as h:
            try:
                rows = lambda_by_noise(h)
            except (ValueError, KeyError):
                continue
        if not rows:
            continue
        d = acc.setdefault(run.variant, {})
        for key, row in (("first", rows[0]), ("last", rows[-1])):
            d.setdefault(f"{key} noisy", []).append(row.share_noisy)
            d.setdefault(f"{key} clean", []).append(row.share_clean)
    if not acc:
        return ""
    cols = ["first clean", "first noisy", "last clean", "last noisy"]
    lines = ["| variant | " + " | ".join(f"KD share, {c}" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for variant, d in acc.items():
        cells = []
        for c in cols:
            v = d.get(c, [])
            std = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.fmean(v):.3f} ± {std:.3f}" if v else "-")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines) + "\n"


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
        if grid in EXTRA:
            parts.append(extra_table(runs, EXTRA[grid]))
        if grid in LAMBDA_SECTIONS:
            parts.append(lambda_table(runs))
    args.out.write_text("".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
