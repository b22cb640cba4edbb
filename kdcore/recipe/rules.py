"""Cross-field rules of a typed recipe: what no single field's type can express (a role that
exists, a name used once, fractions that leave training samples, a schedule that decays)."""

from __future__ import annotations

import math
from typing import Any

from kdcore.errors import RecipeError, did_you_mean
from kdcore.recipe.schema import NAME_BYTES, Recipe
from kdcore.validators import MAX_LR, check_decay

#: keys that may change between a run and its resume, or between the seeds of one variant
#: that ``kdcore report`` averages: they do not change what is computed
RESUMABLE_CHANGES = ("run.name", "run.output_dir", "run.threads", "run.checkpoint_interval_s",
                     "run.loggers", "run.history_skip", "run.distributed_timeout_s",
                     "data.workers")


def check_consistency(recipe: Recipe) -> None:
    """Cross-field rules that no single field's type can express."""
    if not recipe.stages:
        raise RecipeError("a recipe needs at least one [[stages]] entry", key="stages")
    _check_fractions(recipe)
    roles = {r for r, m in recipe.models.items() if m.enabled}
    for role in roles:
        _check_name(role, f"models.{role}")
    for role, model in recipe.models.items():
        _check_schedule(role, model, sum(st.epochs for st in recipe.stages if role in st.train))
    seen_stages: set[str] = set()
    for s, stage in enumerate(recipe.stages):
        key = f"stages[{s}]"
        if stage.name in seen_stages:
            raise RecipeError(f"duplicate stage name '{stage.name}'", key=f"{key}.name")
        seen_stages.add(stage.name)
        _check_name(stage.name, f"{key}.name")
        for field in ("train", "eval"):
            listed = getattr(stage, field) or []
            for i, role in enumerate(listed):
                if role in listed[:i]:  # `train`'s twice would step its optimiser twice a batch
                    raise RecipeError(f"'{role}' is listed twice", key=f"{key}.{field}")
                if role not in roles:
                    raise RecipeError(
                        f"unknown model role '{role}'{did_you_mean(role, roles)}; "
                        f"[models] defines: {', '.join(sorted(roles)) or 'none'}",
                        key=f"{key}.{field}",
                    )
        unseen = [r for r in stage.train if r not in stage.eval_roles]
        if stage.keep != "last" and unseen:
            raise RecipeError(
                f"keep = \"{stage.keep}\" needs the validation accuracy of every model the "
                f"stage trains, but eval leaves out {', '.join(unseen)}; add it to eval, or "
                "keep = \"last\"", key=f"{key}.keep")
        labels: set[str] = set()
        for c, comp in enumerate(stage.components):
            ckey = f"{key}.components[{c}]"
            if comp.enabled:  # a disabled entry may share its label: it is not there
                if comp.label in labels:
                    raise RecipeError(
                        f"two components labelled '{comp.label}'; give one a different 'name'",
                        key=f"{ckey}.name",
                    )
                labels.add(comp.label)
            _check_name(comp.label, f"{ckey}.name")
            for role in comp.models or []:
                if role not in roles:
                    raise RecipeError(
                        f"unknown model role '{role}'{did_you_mean(role, roles)}",
                        key=f"{ckey}.models",
                    )
            if comp.models is None and not stage.train and comp.enabled:
                raise RecipeError(
                    "the stage trains no model, so name the component's 'models'",
                    key=f"{ckey}.models",
                )


DEFAULT_TEST_FRACTION = 0.2
"""What ``data.test_fraction`` means when unset, for a dataset without a test split."""


def _check_fractions(recipe: Recipe) -> None:
    data = recipe.data
    test = DEFAULT_TEST_FRACTION if data.test_fraction is None else data.test_fraction
    if data.val_fraction + test >= 1.0:
        default = " (data.test_fraction defaults to 0.2)" if data.test_fraction is None else ""
        raise RecipeError(
            f"val_fraction + test_fraction is {data.val_fraction + test:g}{default}; it must "
            "be below 1 to leave training samples", key="data.val_fraction")


def _check_schedule(role: str, model: Any, epochs: int) -> None:
    sched, lr = model.schedule, model.optimizer.lr
    if sched.name != "multistep" or sched.gamma <= 1 or lr == 0:
        return
    # in logarithms: gamma ** len(milestones) overflows a float long before it is refused
    steps = len(sched.milestones)
    if math.log(lr) + steps * math.log(sched.gamma) > math.log(MAX_LR):
        raise RecipeError(
            f"gamma {sched.gamma:g} over {steps} milestones takes the learning rate "
            f"{lr:g} above {MAX_LR:g}", key=f"models.{role}.schedule.gamma")
    # a milestone at or past the role's last epoch is never reached
    reached = sum(m < epochs for m in sched.milestones)
    limit = model.optimizer.decay_limit()
    if limit is None or not reached:
        return
    peak = model.highest_lr(epochs)
    try:
        check_decay(peak, model.optimizer.weight_decay, *limit)
    except ValueError as exc:
        raise RecipeError(f"gamma {sched.gamma:g} raises the learning rate to {peak:g} by "
                          f"epoch {sorted(sched.milestones)[reached - 1]}, where {exc}",
                          key=f"models.{role}.schedule.gamma") from None


def _check_name(name: str, key: str) -> None:
    # a name is one part of the history's paths (loss/<component>, test_confusion/<stage>/
    # <role>) and of models/<role>.pt: '.' made HDF5 refuse the stage's first column after a
    # whole stage had trained, and 'a/b' reads as component 'a' of model 'b'
    if not name or name in (".", "..") or "/" in name or not name.isprintable():
        raise RecipeError(f"the name {name!r} cannot be one part of the history's paths and "
                          "column names; give a name that is not empty, '.' or '..', without "
                          "'/' or control characters", key=key)
    if len(name.encode("utf-8")) > NAME_BYTES:
        raise RecipeError(f"the name '{name[:40]}...' is {len(name.encode('utf-8'))} bytes "
                          f"long; the history stores names of at most {NAME_BYTES}", key=key)
