"""The one line logged after each epoch: losses, accuracies, the time it took and the run's
estimated time left."""

from __future__ import annotations

import math
from collections.abc import Mapping

from kdcore.recipe import Recipe


def epoch_line(recipe: Recipe, stage: int, epoch: int, metrics: Mapping[str, float],
               seen: Mapping[int, list[float]]) -> str:
    """The line for ``epoch`` of stage number ``stage``; ``seen`` holds the epoch times of this
    process by stage, this epoch's included."""
    cfg = recipe.stages[stage]
    parts = [f"{cfg.name} {epoch + 1}/{cfg.epochs}"]
    for role in cfg.train:
        if f"train/{role}/loss" in metrics:
            parts.append(f"{role} loss {metrics[f'train/{role}/loss']:.4f}")
    for role in cfg.eval_roles:
        parts.append(f"{role} val {_acc(metrics[f'val/{role}/acc'])} "
                     f"test {_acc(metrics[f'test/{role}/acc'])}")
    parts.append(f"labels {_acc(metrics['label/acc'])}")
    epochs = [st.epochs for st in recipe.stages]
    done = sum(epochs[:stage]) + epoch + 1
    parts.append(f"{metrics['time/epoch']:.1f}s, run {done}/{sum(epochs)} epochs, "
                 f"{time_left(epochs, stage, epoch, seen)} left")
    return " | ".join(parts)


def _acc(value: float) -> str:
    # NaN: an empty split (data.val_fraction = 0), shown as the tables show a missing value
    return "-" if math.isnan(value) else f"{value:.4f}"


def time_left(epochs: list[int], stage: int, epoch: int,
              seen: Mapping[int, list[float]]) -> str:
    """About how long the run has left after ``epoch`` of ``stage``: the stage's own epochs at
    their mean time so far, later stages' at the mean of every epoch timed in this process."""
    all_times = [t for times in seen.values() for t in times]
    if not all_times:
        return "?"
    overall = sum(all_times) / len(all_times)
    current = seen.get(stage) or all_times
    seconds = (epochs[stage] - epoch - 1) * sum(current) / len(current)
    seconds += sum(epochs[stage + 1:]) * overall
    if seconds < 60:
        return f"~{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"~{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"~{minutes}m{secs:02d}s"
