"""kdcore plugin: F&F ("Friends and Foes in Learning from Noisy Labels", arXiv 2103.15055).

A parameterised **reconstruction** (no paper text or code was reachable; see the README):

* dataset ``ncifar`` + noise model ``ncifar_noise``: open noise, closed noise and class
  imbalance on any registered dataset (:mod:`kdcore_ff.ncifar`);
* components ``ff_warmup``, ``instance_filter``, ``label_correction``
  (:mod:`kdcore_ff.components`) and ``ssl_pretrain`` (:mod:`kdcore_ff.ssl`);
* on ncifar runs, the ledger column and history array ``ff/status`` (0 clean, 1 closed-noisy,
  2 open-noisy) and, every epoch, how well each selection drops open and closed noise
  (``select/<name>/open_precision``, ``open_recall``, ``closed_recall``, ``noisy_precision``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kdcore
from kdcore_ff.components import InstanceFilter, LabelCorrection, Warmup
from kdcore_ff.ncifar import (
    DATASET,
    NOISE_MODEL,
    OPEN_CLASS_NAME,
    PRESETS,
    STATUS_CLEAN,
    STATUS_CLOSED,
    STATUS_OPEN,
    filter_quality,
    generate,
    is_ncifar,
    ncifar,
    ncifar_noise,
    run_status,
    sample_status,
)
from kdcore_ff.ssl import SSLPretrain, feature_view, nt_xent

__all__ = [
    "OPEN_CLASS_NAME", "PRESETS", "STATUS_CLEAN", "STATUS_CLOSED", "STATUS_OPEN",
    "InstanceFilter", "LabelCorrection", "SSLPretrain", "Warmup", "feature_view",
    "filter_quality", "generate", "ncifar", "ncifar_noise", "nt_xent", "sample_status",
]


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return {"ff_warmup": Warmup, "instance_filter": InstanceFilter,
            "label_correction": LabelCorrection, "ssl_pretrain": SSLPretrain}


@kdcore.hookimpl
def kdcore_add_datasets() -> Mapping[str, Callable[..., Any]]:
    return {DATASET: ncifar}


@kdcore.hookimpl
def kdcore_add_noise_models() -> Mapping[str, Callable[..., Any]]:
    return {NOISE_MODEL: ncifar_noise}


@kdcore.hookimpl
def kdcore_configure(recipe: kdcore.Recipe) -> list[str] | None:
    """The ncifar dataset and its noise model only make sense together."""
    data = recipe.data
    problems = []
    if data.dataset == DATASET:
        if data.noise.model != NOISE_MODEL:
            problems.append(
                f"data.noise.model: the {DATASET} dataset needs the noise model '{NOISE_MODEL}' "
                f"(it relabels the open-set images into the kept classes and adds the closed "
                f"noise), got '{data.noise.model}'")
        if data.gold_per_class:
            problems.append(
                f"data.gold_per_class: the {DATASET} dataset cannot make a clean gold split "
                "(it would hold open-set images labelled with the open-set class); set it to 0")
        if not data.noise.apply_to_val:
            problems.append(
                f"data.noise.apply_to_val: the {DATASET} dataset needs it true (a clean "
                "validation split would hold open-set images labelled with the open-set class)")
    elif data.noise.model == NOISE_MODEL:
        problems.append(f"data.noise.model: '{NOISE_MODEL}' works only with the {DATASET} "
                        f"dataset (its last class is the open-set class), not '{data.dataset}'")
    return problems or None


@kdcore.hookimpl
def kdcore_run_start(ctx: kdcore.RunContext) -> None:
    """On ncifar data, record every training sample's true status in the ledger (for the
    components; the observers' writes are tagged ``observer``) and, once, in the history's
    ``/data/ff/status``."""
    if is_ncifar(ctx):
        led = ctx.ledger
        status = sample_status(led["clean_label"], led["noisy_label"], ctx.num_classes - 1)
        led.add("ff/status", status, kind="label", snapshot=False)
        ctx.record_data("ff/status", status.int())


@kdcore.hookimpl
def kdcore_epoch_end(ctx: kdcore.RunContext, epoch: int, metrics: dict[str, float]) -> None:
    """On ncifar data: realised noise shares, and each selection's open/closed filtering."""
    if not is_ncifar(ctx):
        return
    status = run_status(ctx)
    metrics["ff/open_share"] = float((status == STATUS_OPEN).double().mean())
    metrics["ff/closed_share"] = float((status == STATUS_CLOSED).double().mean())
    led = ctx.ledger
    for name in list(led):
        # the selection masks: the columns whose quality the engine reported this epoch
        # (every ``select/`` column of kind ``mask``; a context does not show column kinds)
        if name.startswith("select/") and f"{name}/fraction" in metrics:
            for key, value in filter_quality(led[name], status).items():
                metrics[f"{name}/{key}"] = value
