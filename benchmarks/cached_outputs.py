"""What ``models.<role>.cache_outputs`` saves: Hinton KD on Fashion-MNIST (recipes/kd-fmnist.toml,
a 784-512-512-10 teacher, a 784-64-10 student), the student stage's epochs with the frozen
teacher run on every batch against its outputs read from one stored pass over the training set.

The two sides are whole runs of the recipe (a short teacher stage, then the student stage),
alternated ``--repeats`` times in one process, the order swapped every repeat so that neither
side always runs first. Each run's student epochs are read from its history (``time/epoch``);
the saving is the ratio of a pair's median student epochs (uncached / cached). Each pair's
final student accuracy is compared too: the stored pass batches the training set differently
(``data.eval_batch_size``), so the two agree up to float rounding, bit for bit on this CPU.

Usage:  .venv/bin/python benchmarks/cached_outputs.py [--repeats 4] [--teacher-epochs 1]
                                                       [--student-epochs 5]
Needs Fashion-MNIST (make fashion-mnist). Writes benchmarks/results/cached_outputs.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from loguru import logger

import kdcore

RESULTS = Path(__file__).parent / "results"
RECIPE = Path(__file__).parent.parent / "recipes" / "kd-fmnist.toml"


def one_run(cached: bool, teacher_epochs: int, student_epochs: int) -> dict:
    overrides = [f"stages.teacher.epochs={teacher_epochs}",
                 f"stages.student.epochs={student_epochs}",
                 f"models.teacher.cache_outputs={'true' if cached else 'false'}"]
    with tempfile.TemporaryDirectory() as tmp:
        result = kdcore.run(RECIPE, overrides=overrides, out=Path(tmp) / "run")
        with kdcore.History(result.run_dir) as h:
            student = [t for t, (stage, _) in zip(h.metric("time/epoch").tolist(), h.epochs())
                       if stage == "student"]
        acc = result.summary["student"]["last_test_acc"]
    return {"student_epoch_s": student, "student_test_acc": acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--student-epochs", type=int, default=5)
    args = parser.parse_args()
    logger.remove()
    torch.set_num_threads(2)
    one_run(False, 1, 1)  # untimed: the first optimiser of a process imports torch._dynamo
    pairs = []
    for rep in range(args.repeats):
        order = (False, True) if rep % 2 == 0 else (True, False)
        runs = {c: one_run(c, args.teacher_epochs, args.student_epochs) for c in order}
        plain = statistics.median(runs[False]["student_epoch_s"])
        cached = statistics.median(runs[True]["student_epoch_s"])
        pairs.append({"uncached": runs[False], "cached": runs[True],
                      "saving": plain / cached})
        print(f"repeat {rep}: student epoch {1000 * plain:.0f} ms uncached, "
              f"{1000 * cached:.0f} ms cached ({plain / cached:.2f}x); test acc "
              f"{runs[False]['student_test_acc']:.4f} / {runs[True]['student_test_acc']:.4f}")
    savings = [p["saving"] for p in pairs]
    out = {"recipe": "recipes/kd-fmnist.toml", "teacher_epochs": args.teacher_epochs,
           "student_epochs": args.student_epochs, "threads": 2, "pairs": pairs,
           "saving_median": statistics.median(savings), "saving_min": min(savings),
           "saving_max": max(savings),
           "same_accuracy": all(p["uncached"]["student_test_acc"]
                                == p["cached"]["student_test_acc"] for p in pairs)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cached_outputs.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"student epoch, uncached / cached: median {out['saving_median']:.2f}x "
          f"(range {out['saving_min']:.2f}-{out['saving_max']:.2f}, {args.repeats} pairs); "
          f"same test accuracy in every pair: {out['same_accuracy']}")


if __name__ == "__main__":
    main()
