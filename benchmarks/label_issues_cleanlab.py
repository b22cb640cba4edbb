"""kdcore's label-issue ranking against cleanlab's ``find_label_issues`` on the same runs.

Usage:
    .venv/bin/python benchmarks/label_issues_cleanlab.py runs/amlkd-fmnist-sym/*/seed* \\
        --out benchmarks/results/label_issues_cleanlab.json

For each finished run (one with ``summary.json``):

* ours: ``kdcore.label_issues(run)`` (docs/history.md, "Label issues"): the samples flagged at
  the model's last trained epoch, ranked by the mean over its epochs of 1 - the run's belief in
  the given label, ties by the same mean of 1 - the model's own softmax of it;
* cleanlab's: ``cleanlab.filter.find_label_issues(labels=given labels, pred_probs=softmax of
  the same model's training logits at its last trained epoch,
  return_indices_ranked_by="self_confidence")``. These pred_probs are **in-sample**: the model
  trained on the very samples it scores, where cleanlab asks for out-of-sample (cross-validated)
  probabilities; a model that has fit a noisy label is confident in it, so this is not
  cleanlab at its best. The JSON says so (``pred_probs``).

Both lists are scored against the true labels (synthetic noise): precision at k for k in
(500, 1000, 2000, the number of truly mislabelled samples; null where the list is shorter than
k), the list's length, its precision (as a whole) and its recall. Runs are grouped by grid
setting and variant (the path ``<setting>/<variant>/seed<k>``, e.g.
runs/amlkd-fmnist-sym/amlkd/seed0 -> setting amlkd-fmnist-sym, variant amlkd) with mean ± std
over seeds (the sample std, 0 for one seed). The script prints a Markdown table
(:func:`markdown`, for benchmarks/results_doc.py).
Needs the cleanlab extra: ``pip install 'kdcore[cleanlab]'``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdcore.history import History
from kdcore.label_ranking import find_label_issues, softmax

K = (500, 1000, 2000)
METHODS = ("kdcore", "cleanlab")
PRED_PROBS = ("in-sample: softmax of the model's training logits at its last trained epoch "
              "(the model trained on these samples; not cross-validated)")
_SEED = re.compile(r"seed(\d+)")


def where(run_dir: Path) -> tuple[str, str, int | None]:
    """``(setting, variant, seed)`` of ``<setting>/<variant>/seed<k>``; a run directory of
    another shape is its own setting and variant, without a seed."""
    found = _SEED.fullmatch(run_dir.name)
    if found is None:
        return run_dir.name, run_dir.name, None
    return run_dir.parent.parent.name, run_dir.parent.name, int(found.group(1))


def list_scores(truly: np.ndarray, num_mislabelled: int, ks: Sequence[int]) -> dict[str, Any]:
    """A ranked list's length, precision (of the whole list), recall and precision at each
    ``k`` (None past its end), from ``truly``: whether each listed sample, in list order, is
    truly mislabelled."""
    hits = np.cumsum(truly)
    return {
        "length": int(truly.shape[0]),
        "precision": float(truly.mean()) if len(truly) else None,
        "recall": float(truly.sum() / num_mislabelled) if num_mislabelled else None,
        "precision_at": {str(k): (float(hits[k - 1] / k) if 0 < k <= len(truly) else None)
                         for k in ks},
    }


def compare_run(run_dir: str | Path, model: str | None = None) -> dict[str, Any]:
    """Ours against cleanlab's list on one run (see the module's text)."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    run_dir = Path(run_dir)
    ours = find_label_issues(run_dir, model)
    with History(run_dir) as h:
        pred_probs = softmax(h.column(f"logits/{ours.model}", int(ours.rows[-1])))
        if "clean_label" not in h.data_names():
            raise SystemExit(f"{run_dir}: no true labels in the history; nothing to score")
        given = h.data("noisy_label").astype(np.int64)
        clean = h.data("clean_label").astype(np.int64)
    truly = clean != given
    ranked = cleanlab_issues(labels=given, pred_probs=pred_probs, n_jobs=1,
                             return_indices_ranked_by="self_confidence")
    num = int(truly.sum())
    ks = sorted({*K, num} - {0})
    setting, variant, seed = where(run_dir)
    return {
        "run": str(run_dir), "setting": setting, "variant": variant, "seed": seed,
        "model": ours.model, "num_samples": int(given.shape[0]), "num_mislabelled": num,
        "ks": ks,
        "kdcore": list_scores(truly[ours.index], num, ks),
        "cleanlab": list_scores(truly[np.asarray(ranked, dtype=np.int64)], num, ks),
    }


def _mean_std(values: Sequence[float | None]) -> dict[str, Any] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1
            else 0.0, "n": len(vals)}


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (setting, variant): seeds, and mean ± std over them of each list's length,
    precision, recall and precision at 500, 1000, 2000 and at the number truly mislabelled
    (``precision_at_n_mislabelled``, each run's own number)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["setting"], r["variant"]), []).append(r)
    out = []
    for (setting, variant), items in groups.items():
        row: dict[str, Any] = {"setting": setting, "variant": variant,
                               "model": items[0]["model"], "seeds": len(items),
                               "num_mislabelled": _mean_std([r["num_mislabelled"]
                                                             for r in items])}
        for method in METHODS:
            scores = [r[method] for r in items]
            row[method] = {
                "length": _mean_std([s["length"] for s in scores]),
                "precision": _mean_std([s["precision"] for s in scores]),
                "recall": _mean_std([s["recall"] for s in scores]),
                **{f"precision_at_{k}": _mean_std([s["precision_at"].get(str(k))
                                                   for s in scores]) for k in K},
                "precision_at_n_mislabelled": _mean_std(
                    [s["precision_at"].get(str(r["num_mislabelled"]))
                     for s, r in zip(scores, items)]),
            }
        out.append(row)
    return out


def _cell(stat: dict[str, Any] | None, seeds: int, pct: bool = True) -> str:
    if stat is None:
        return "n/a"
    scale, digits = (100, 1) if pct else (1, 0)
    text = f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"
    return text if stat["n"] == seeds else f"{text} ({stat['n']} of {seeds} seeds)"


def markdown(results: dict[str, Any]) -> str:
    """The comparison as a Markdown table (``results``: what :func:`main` writes as JSON),
    one row per setting, variant and method; precision and recall in percent."""
    head = ["setting", "variant", "model", "seeds", "method", "list length", "precision",
            "recall",
            *(f"P@{k}" for k in K), "P@#mislabelled"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results["summary"]:
        for method in METHODS:
            s, n = row[method], row["seeds"]
            cells = [row["setting"], row["variant"], row["model"], str(n), method,
                     _cell(s["length"], n, pct=False), _cell(s["precision"], n),
                     _cell(s["recall"], n),
                     *(_cell(s[f"precision_at_{k}"], n) for k in K),
                     _cell(s["precision_at_n_mislabelled"], n)]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"cleanlab's pred_probs: {results['pred_probs']}; cleanlab "
                 f"{results['cleanlab_version']}, return_indices_ranked_by=\"self_confidence\". "
                 "n/a: a list shorter than k, or no mislabelled sample.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--model", default=None, help="the model role (default: as "
                        "kdcore label-issues chooses)")
    parser.add_argument("--out", type=Path, default=None, help="where the JSON goes")
    args = parser.parse_args(argv)
    import cleanlab

    finished = [r for r in args.runs if (r / "summary.json").is_file()]
    for r in sorted(set(args.runs) - set(finished)):
        print(f"skipped {r}: not a finished run (no summary.json)", file=sys.stderr)
    runs = [compare_run(r, args.model) for r in finished]
    results = {"pred_probs": PRED_PROBS, "cleanlab_version": cleanlab.__version__,
               "ks": list(K), "runs": runs, "summary": summarize(runs)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results), end="")
    return results


if __name__ == "__main__":
    main()
