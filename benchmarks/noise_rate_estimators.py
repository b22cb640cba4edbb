"""How close can a noise-rate estimate get without the true labels? Estimators on finished runs.

For each finished run given (a KD or AML-KD run: its teacher trained with CE on the noisy
labels and was kept at its best noisy-validation epoch), the teacher's saved weights are loaded
and its logits computed on the training and the (held-out, noisy) validation split; then:

* ``mixture_teacher``: small_loss's ``estimate = "mixture"`` (a two-component Gaussian
  mixture over per-sample CE against the noisy labels, DivideMix's reading) on the teacher's
  training-set losses;
* ``disagreement_train``: small_loss's ``estimate = "disagreement"``: the share of training
  samples whose noisy label is not the teacher's prediction;
* ``disagreement_val``: the same on the held-out validation split (the teacher never fit it);
* ``confident_joint_val``: Confident Learning's estimate (Northcutt et al. 2021): per-class
  thresholds = the mean predicted probability of the class over the samples labelled with it,
  the confident joint of (given label, most probable class above its threshold) calibrated to
  the label counts, noise rate = 1 - its trace; on the validation split, with the teacher's
  probabilities temperature-scaled to the noisy validation labels (one temperature, minimum
  NLL over a log grid);
* ``max_prob_val``: 1 - the mean largest temperature-scaled probability on the validation
  split (what the noise rate is for a calibrated model whose classes do not overlap);
* ``mixture_student`` (AML-KD runs): small_loss's ``estimate = "mixture"`` on the student's
  per-sample losses against the noisy labels at the run's last epoch (its logits as the
  history recorded them, float16);
* ``lp_disagreement`` (AML-KD runs): small_loss's ``estimate = "column"`` as the AML-KD recipes
  set it: the share of noisy labels that ``lp/initial_lp/refined`` (the labels of the warm-up's
  label propagation of the teacher's predictions over its graph, the least confident 5%
  keeping their noisy label) differs from;
* ``logged`` (AML-KD runs): what the run's own small_loss logged, its
  ``select/small_loss/rate_estimate`` at the last epoch (whichever estimate its recipe set).

Usage:  .venv/bin/python benchmarks/noise_rate_estimators.py runs/amlkd-fmnist-sym/amlkd/seed*
            runs/amlkd-fmnist-pair/amlkd/seed* --out benchmarks/results/noise_rate_estimators.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from loguru import logger

ESTIMATORS = ("logged", "lp_disagreement", "mixture_student", "mixture_teacher",
              "disagreement_train", "disagreement_val", "confident_joint_val", "max_prob_val")


def confident_joint_rate(probs: np.ndarray, labels: np.ndarray) -> float:
    """Confident Learning's noise rate from ``probs`` (N x C) and given ``labels`` (N,)."""
    c = probs.shape[1]
    thresholds = np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0
                           for j in range(c)])
    above = probs >= thresholds[None, :]
    confident = np.where(above, probs, -1.0).argmax(1)
    has = above.any(1)
    joint = np.zeros((c, c))
    np.add.at(joint, (labels[has], confident[has]), 1)
    counts = np.bincount(labels, minlength=c)
    joint = joint / np.maximum(joint.sum(1, keepdims=True), 1) * counts[:, None]
    return float(1.0 - np.trace(joint) / joint.sum())


def temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature of least NLL on ``labels`` over a log grid from 0.2 to 20."""
    grid = torch.exp(torch.linspace(np.log(0.2), np.log(20.0), 200, dtype=torch.float64))
    nll = [float(torch.nn.functional.cross_entropy(logits / t, labels)) for t in grid]
    return float(grid[int(np.argmin(nll))])


def estimate(run_dir: Path) -> dict[str, float]:
    import kdcore
    from kdcore.history import History
    from kdcore.plan import build_plan
    from kdcore.prepare import prepare_run
    from kdcore.recipe import load_recipe
    from kdcore_selection.small_loss import mixture_noise_rate

    host = kdcore.PluginHost()
    recipe = load_recipe(run_dir / "recipe.toml")
    with tempfile.TemporaryDirectory() as tmp:
        run = prepare_run(build_plan(recipe, host), host, Path(tmp))
    teacher = run.models["teacher"]
    teacher.load_state_dict(torch.load(run_dir / "models" / "teacher.pt", weights_only=True))
    teacher.eval()

    def logits(split: str) -> torch.Tensor:
        ds = run.data.split(split)
        with torch.no_grad():
            return torch.cat([teacher(run.data.inputs(ds, rows))[0]
                              for rows in run.data.batches(ds, 2048)]).double()

    train, val = logits("train"), logits("val")
    y_train, y_val = run.data.train_noisy, run.data.val_noisy
    t = temperature(val, y_val)
    p_val = torch.softmax(val / t, 1).numpy()
    out = {
        "realised": float((y_train != run.data.train.y).double().mean()),
        "temperature": t,
        "mixture_teacher": mixture_noise_rate(
            torch.nn.functional.cross_entropy(train, y_train, reduction="none")),
        "disagreement_train": float((train.argmax(1) != y_train).double().mean()),
        "disagreement_val": float((val.argmax(1) != y_val).double().mean()),
        "confident_joint_val": confident_joint_rate(p_val, y_val.numpy()),
        "max_prob_val": float(1.0 - p_val.max(1).mean()),
    }
    with History(run_dir) as h:
        if "select/small_loss/rate_estimate" in h.metric_names():
            logged = h.metric("select/small_loss/rate_estimate")
            logged = logged[np.isfinite(logged)]
            if logged.size:
                out["logged"] = float(logged[-1])
        noisy = torch.from_numpy(h.data("noisy_label")).long()
        if "lp/initial_lp/refined" in h.column_names():
            lp = torch.from_numpy(h.column("lp/initial_lp/refined", -1)).long()
            out["lp_disagreement"] = float((lp != noisy).double().mean())
        if "logits/student" in h.column_names():
            student = torch.from_numpy(h.column("logits/student", -1)).double()
            out["mixture_student"] = mixture_noise_rate(
                torch.nn.functional.cross_entropy(student, noisy, reduction="none"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logger.remove()
    torch.set_num_threads(2)
    per_run, groups = {}, defaultdict(list)
    for run_dir in args.runs:
        if not (run_dir / "summary.json").is_file():
            continue
        per_run[str(run_dir)] = est = estimate(run_dir)
        groups[run_dir.parent.parent.name].append(est)
        print(run_dir, {k: round(v, 3) for k, v in est.items()})
    summary = {}
    print("| setting | seeds | realised | " + " | ".join(ESTIMATORS) + " |")
    print("|---|---|---|" + "---|" * len(ESTIMATORS))
    for setting, ests in groups.items():
        row = {}
        for key in ("realised", *ESTIMATORS):
            vals = [e[key] for e in ests if key in e]
            if vals:
                row[key] = {"mean": statistics.fmean(vals),
                            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                            "n": len(vals)}
        summary[setting] = row
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" if k in row else "-"
                 for k in ("realised", *ESTIMATORS)]
        print(f"| {setting} | {len(ests)} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({"runs": per_run, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
