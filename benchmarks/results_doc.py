"""Write docs/results.md from finished grids: one table per grid, with the noise-gap recovery.

Usage:  .venv/bin/python benchmarks/results_doc.py [--out docs/results.md]
Reads the grid directories listed in SECTIONS (made by `kdcore ablate`, see each grid's command).
A grid that has not been run here keeps the table the previous docs/results.md held for it,
marked as an earlier measurement (or is listed as not run); nothing is invented.
"""

from __future__ import annotations

import argparse
import fnmatch
import statistics
from pathlib import Path
from typing import NamedTuple

import numpy as np

from kdcore.errors import KdcoreError
from kdcore.history import History
from kdcore.report import RunResult, aggregate, find_runs, gap_recovery, markdown_table

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ("student",)
PEERS = ("student", "peer_a")  # SMKD/DML's student is peer_a, the CE student's MLP [64]


class Caveat(NamedTuple):
    label: str  # the name its numbers carry wherever they appear
    note: str  # one short footnote under every table that holds them


# Methods whose implementation is not the paper's own: a reconstruction, or a reading that fixes
# choices the paper leaves open (each plugin's README says which). Their variants are shown as
# "<variant> — <label>", and each table with one of them gets the method's footnote.
CAVEATS = {
    "ff": Caveat(
        "F&F-style reconstruction",
        "no F&F text beyond its abstract and introduction, and no code, was reachable: only the "
        "names of its parts (SSL, warm-up, instance filtering, label correction) are F&F's, how "
        "each works is our reading (`plugins/kdcore-ff/README.md`); these are not F&F's numbers"),
    "smkd": Caveat(
        "SMKD (our reading of open choices)",
        "no SMKD text or code was reachable: the certainty measure, the threshold and its "
        "schedule, the target of uncertain samples and the distillation form are our choices "
        "(`plugins/kdcore-smkd/README.md`, open questions)"),
    "kdmlc": Caveat(
        "KDMLC (our reading)",
        "MLC follows its released code; KDMLC's student loss is a reconstruction (no code or "
        "full text): one online stage, (1 - β) CE on the corrected labels + β T² KL to the MLC "
        "teacher, β = 0.5, T = 4 (`plugins/kdcore-mlc/README.md`)"),
}
# grid variant -> the method of CAVEATS it runs
CAVEAT_VARIANTS = {"ff": "ff", "smkd-progressive": "smkd", "smkd-static": "smkd",
                   "kdmlc": "kdmlc"}


def variant_label(variant: str) -> str:
    """How a variant is named in docs/results.md: with its method's caveat label, if any."""
    method = CAVEAT_VARIANTS.get(variant)
    return variant if method is None else f"{variant} — {CAVEATS[method].label}"


def caveat_notes(variants: list[str]) -> str:
    """The footnotes of the caveated methods among ``variants`` (one line each, or "")."""
    methods = {CAVEAT_VARIANTS[v] for v in variants if v in CAVEAT_VARIANTS}
    notes = [f"*{c.label}*: {c.note}." for m, c in CAVEATS.items() if m in methods]
    return "\n" + "\n\n".join(notes) + "\n" if notes else ""


def labelled(rows: list[dict]) -> list[dict]:
    """``rows`` with each variant named by :func:`variant_label` (baselines keep their name)."""
    return [{**r, "variant": variant_label(r["variant"])} for r in rows]


class Section(NamedTuple):
    title: str
    setting: str  # the summary table's short name of the data and noise
    grid: str  # a grid file in benchmarks/grids (run into runs/<grid>), or a run directory
    gap_models: tuple[str, ...] = STUDENT
    baseline: str = "ce"
    ceiling: str = "clean"
    note: str = ""

    @property
    def runs(self) -> str:
        return self.grid if "/" in self.grid else f"runs/{self.grid}"

    @property
    def command(self) -> str:
        if "/" in self.grid:
            return DIGITS_COMMAND
        return f"kdcore ablate --grid benchmarks/grids/{self.grid}.toml --out runs/{self.grid}"


DIGITS_COMMAND = ("kdcore ablate recipes/ce.toml recipes/kd.toml recipes/ls.toml "
                  "recipes/clean.toml recipes/amlkd.toml recipes/amlkd-no-awe.toml "
                  "--seeds 0,1,2,3,4,5,6,7,8,9 --out runs/digits-baselines")
SYM, PAIR = "Fashion-MNIST, 40% symmetric", "Fashion-MNIST, 40% pair-flip"
IDN = "Fashion-MNIST, 40% instance-dependent"
GOLD = "1,000 gold images held out for every variant, the clean student's included"
PEER_NOTE = ("peer_a, the MLP [64], is the student; its gap is measured against the CE and "
             "clean students, the same MLP [64] on the same split")
SECTIONS = [
    Section("Baselines and AML-KD on digits (40% symmetric noise)", "digits, 40% symmetric",
            "runs/digits-baselines"),
    Section("AML-KD on Fashion-MNIST, 40% symmetric noise", SYM, "amlkd-fmnist-sym"),
    Section("AML-KD on Fashion-MNIST, 40% pair-flip noise", PAIR, "amlkd-fmnist-pair"),
    Section("The baselines and AML-KD on Fashion-MNIST, 40% instance-dependent noise", IDN,
            "baselines-fmnist-idn"),
    Section("SMKD (our reading of open choices) and DML on Fashion-MNIST, 40% symmetric noise",
            SYM, "smkd-fmnist-sym", PEERS, note=PEER_NOTE),
    Section("SMKD (our reading of open choices) and DML on Fashion-MNIST, 40% pair-flip noise",
            PAIR, "smkd-fmnist-pair", PEERS, note=PEER_NOTE),
    Section("ALM-KD and AMAL on Fashion-MNIST, 40% symmetric noise", SYM + ", gold split",
            "almkd-fmnist-sym", note=GOLD),
    Section("ALM-KD and AMAL on Fashion-MNIST, 40% pair-flip noise", PAIR + ", gold split",
            "almkd-fmnist-pair", note=GOLD),
    Section("MLC and KDMLC (our reading) on Fashion-MNIST, 40% symmetric noise",
            SYM + ", gold split", "mlc-fmnist-sym", note=GOLD),
    Section("MLC and KDMLC (our reading) on Fashion-MNIST, 40% pair-flip noise",
            PAIR + ", gold split", "mlc-fmnist-pair", note=GOLD),
    Section("LSH feature mimicking on Fashion-MNIST, 40% symmetric noise", SYM,
            "lsh-fmnist-sym"),
    Section("LSH feature mimicking on Fashion-MNIST, 40% pair-flip noise", PAIR,
            "lsh-fmnist-pair"),
    Section("F&F-style reconstruction on Fashion-MNIST, 40% symmetric noise", SYM,
            "ff-fmnist-sym"),
    Section("F&F-style reconstruction on Fashion-MNIST, 40% pair-flip noise", PAIR,
            "ff-fmnist-pair"),
    Section("F&F-style reconstruction on the nCIFAR-style Fashion-MNIST set",
            "fmnist-lt (open + closed, long tail)", "ff-fmnist",
            note="fmnist-lt: open-set images, closed noise, long tail; the ceiling is the CE "
                 "student on the same kept-class images without open-set images or closed "
                 "noise"),
]

# per section: history metrics (glob patterns) read at the last epoch where they are finite
EXTRA = {
    "runs/amlkd-fmnist-sym": ["label/acc", "select/small_loss/precision",
                              "select/small_loss/recall"],
    "runs/amlkd-fmnist-pair": ["label/acc", "select/small_loss/precision",
                               "select/small_loss/recall"],
    "runs/baselines-fmnist-idn": ["label/acc", "select/small_loss/precision",
                                  "select/small_loss/recall"],
    "runs/smkd-fmnist-sym": ["select/*/peer_a/fraction", "select/*/peer_a/precision"],
    "runs/smkd-fmnist-pair": ["select/*/peer_a/fraction", "select/*/peer_a/precision"],
    "runs/ff-fmnist-sym": ["select/instance_filter/precision", "select/instance_filter/recall",
                           "label/acc"],
    "runs/ff-fmnist-pair": ["select/instance_filter/precision", "select/instance_filter/recall",
                            "label/acc"],
    "runs/ff-fmnist": ["select/instance_filter/open_precision",
                       "select/instance_filter/open_recall", "label/acc"],
}
LAMBDA_SECTIONS = {"runs/almkd-fmnist-sym", "runs/almkd-fmnist-pair"}
# sections whose figures go into docs/figures (kdcore report --plots, the student's)
AMLKD_FIGURES = ("test_student_acc", "val_student_acc", "label_acc", "label_fixed",
                 "label_broken", "weight_hist_amlkd", "transition_amlkd")
FIGURES = {"runs/amlkd-fmnist-sym": AMLKD_FIGURES, "runs/amlkd-fmnist-pair": AMLKD_FIGURES}


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
        lines.append(f"| {variant_label(variant)} | `{name}` | {statistics.fmean(vals):.4f} "
                     f"± {std:.4f} |")
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
        lines.append(f"| {variant_label(variant)} | " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines) + "\n"


INTRO = """# Results

Every table is produced by `make results` (this script, `benchmarks/results_doc.py`) from runs
that the command under each table makes. Numbers are test accuracy in %, mean ± standard
deviation over seeds, at the epoch of best **validation** accuracy (measured on the noisy
validation labels, as a practitioner must) and at the last epoch; the test set is never used for
model selection. "gap recovered" is (acc - acc_CE) / (acc_clean - acc_CE) of the student at its
best-validation epoch: 0 is plain CE on noisy labels, 1 is the clean-label student.

The Fashion-MNIST grids share one setting (2-core CPU budget): a stratified 20,000-image subset
of the 54,000 training images, the whole noisy validation split (6,000) and the clean test set
(10,000), flattened images, student MLP [64], teacher MLP [512, 512], 20 student epochs (the KD
and AML-KD teachers train 15 epochs, the other teachers 20), batch 128, SGD; each grid file in
`benchmarks/grids/` states its variants and overrides. Rows of the same recipe and seed in two
grids are the same run repeated (training is deterministic on the CPU), so their numbers agree.
`kdcore ablate` skips the runs its folder already holds, so a table is only as new as its oldest
run: each history records which code made it, and `kdcore ablate` and `kdcore report` warn when
runs come from code edited since (docs/recipes.md, "Which code made a run"). The tables measured
in session 29 were rerun from empty folders; session 47 reran the digits table's 60 runs from an
empty folder on its code, and every number of the table came out the same
(`benchmarks/results/session47/digits_baselines.txt`).
"""


def figures(runs: list[RunResult], name: str, plots: tuple[str, ...], docs: Path) -> str:
    """The student's figures named in ``plots`` (curves: mean and one-std band over seeds per
    variant) as PNGs in docs/figures, linked here."""
    from kdcore.figures import draw_figures

    out = docs / "figures"
    out.mkdir(exist_ok=True)
    links = []
    for fig in draw_figures(runs, "student"):
        if fig.name in plots:
            target = out / f"{name}-{fig.name}.png"
            target.write_bytes(fig.png)
            links.append(f"![{fig.title} ({name})](figures/{target.name})")
    return "\n" + "\n\n".join(links) + "\n"


def summary_table(found: list[tuple[Section, list[dict]]]) -> str:
    """One row per method student and setting: its accuracy and its gap recovery."""
    lines = ["| setting | variant | model | test acc, best val (%) | gap recovered |",
             "|---|---|---|---|---|"]
    shown: list[str] = []
    for section, rows in found:
        gaps = gap_recovery(rows, section.baseline, section.ceiling, section.gap_models)
        for r in rows:
            gap = gaps.get((r["variant"], r["model"]))
            if gap is None or r["variant"] in (section.baseline, section.ceiling):
                continue
            shown.append(r["variant"])
            lines.append(f"| {section.setting} | {variant_label(r['variant'])} | {r['model']} | "
                         f"{100 * r['best_mean']:.2f} ± {100 * r['best_std']:.2f} | "
                         f"**{gap:+.2f}** |")
    return "\n".join(lines) + "\n" + caveat_notes(shown)


# the grids whose runs the label-issue lists are compared on, and the variants compared
ISSUE_GRIDS = ("amlkd-fmnist-sym", "amlkd-fmnist-pair")
ISSUE_VARIANTS = ("ce", "kd", "amlkd", "amlkd-no-awe")
ISSUE_TITLE = "Label issues: kdcore's ranked list against cleanlab"
ISSUE_COMMAND = ("python benchmarks/label_issues_cleanlab.py "
                 + " ".join(f"runs/{g}/{{{','.join(ISSUE_VARIANTS)}}}/seed*" for g in ISSUE_GRIDS)
                 + " --out benchmarks/results/label_issues_cleanlab.json")


def label_issue_section(earlier: dict[str, str]) -> str:
    """kdcore label-issues against cleanlab's find_label_issues on the AML-KD grids' runs
    (benchmarks/label_issues_cleanlab.py, which writes its JSON beside the table)."""
    import importlib.util

    head = (f"\n## {ISSUE_TITLE}\n\nFor each finished run, `kdcore label-issues` (its reading: "
            "docs/history.md, \"Label issues\") against `cleanlab.filter.find_label_issues` "
            "on the same model's predictions; both lists scored against the true labels "
            "(precision at k: the share truly mislabelled among the first k; 8,000 of the "
            "20,000 training labels are wrong in every run). Under pair-flip noise the top of "
            "both lists is less precise than further down: a flipped label names a plausible "
            "class, so the most doubted samples include hard ones whose label is right.\n\n"
            f"```sh\n{ISSUE_COMMAND}\n```\n\n")
    runs = sorted(p for g in ISSUE_GRIDS for v in ISSUE_VARIANTS
                  for p in (ROOT / "runs" / g / v).glob("seed*") if (p / "summary.json").is_file())
    if not runs or importlib.util.find_spec("cleanlab") is None:
        return head + earlier.get(ISSUE_TITLE, "Not run yet.\n")
    spec = importlib.util.spec_from_file_location(
        "label_issues_cleanlab", ROOT / "benchmarks" / "label_issues_cleanlab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main([str(p) for p in runs] + [
        "--out", str(ROOT / "benchmarks" / "results" / "label_issues_cleanlab.json")])
    return head + module.markdown(results)


EARLIER = ("*Earlier measurement, not rerun by this regeneration* (its grid has no runs "
           "here; the command above reruns it, and `make results` regenerates this file). "
           "Not in the summary table above.\n\n")


def previous_sections(path: Path) -> dict[str, str]:
    """The body of each ``## `` section of the existing docs/results.md after its command
    block (the tables and notes), by title."""
    if not path.exists():
        return {}
    out = {}
    for part in path.read_text().split("\n## ")[1:]:
        title, _, body = part.partition("\n")
        _, fence, after = body.partition("```\n\n")
        if fence and after.strip() and not after.startswith("Not run yet"):
            out[title.strip()] = after if after.startswith(EARLIER) else EARLIER + after
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args()
    parts: list[str] = []
    found: list[tuple[Section, list[dict]]] = []
    earlier = previous_sections(args.out)
    for section in SECTIONS:
        parts.append(f"\n## {section.title}\n\n")
        if section.note:
            parts.append(f"{section.note[0].upper()}{section.note[1:]}.\n\n")
        parts.append(f"```sh\n{section.command}\n```\n\n")
        try:
            runs = find_runs([ROOT / section.runs])
        except KdcoreError:
            parts.append(earlier.get(section.title, "Not run yet.\n"))
            continue
        rows = aggregate(runs)
        found.append((section, rows))
        parts.append(markdown_table(labelled(rows), baseline=section.baseline,
                                    ceiling=section.ceiling, gap_models=section.gap_models))
        parts.append(caveat_notes([r["variant"] for r in rows]))
        if section.runs in EXTRA:
            parts.append(extra_table(runs, EXTRA[section.runs]))
        if section.runs in LAMBDA_SECTIONS:
            parts.append(lambda_table(runs))
        if section.runs in FIGURES:
            parts.append(figures(runs, section.grid, FIGURES[section.runs], args.out.parent))
    summary = "\n## Every method against CE and the clean ceiling\n\n" + summary_table(found)
    parts.append(label_issue_section(earlier))
    args.out.write_text(INTRO + summary + "".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
