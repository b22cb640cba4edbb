"""The run's plan: everything a recipe asks for, resolved and checked once, before training.

``kdcore check``, the start banner and the run build the plan through :func:`build_plan`, one
code path, so a recipe that ``check`` accepts does not fail while the run is being set up.
The plan instantiates every stage's components once per run (each validating its own
parameters), resolves the model roles they use, checks that every ledger column a component
reads is written earlier (by the data, an earlier stage, or an earlier component of its stage)
and binds the parameters of the dataset loader, the noise model, the architectures and the
augmentations. Loading the data and building the models is :mod:`kdcore.prepare`'s.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from loguru import logger

from kdcore.component import Component, ComponentSpec
from kdcore.config import bind_params, structure
from kdcore.errors import KdcoreError, RecipeError, did_you_mean
from kdcore.history_names import declared_column_problem
from kdcore.plugins import PluginHost
from kdcore.recipe import Recipe, StageConfig

DATA_KINDS = {"noisy_label": "label", "clean_label": "label", "clean_mask": "mask",
              "base_target": "target", "target": "target"}
"""The columns every ledger has from the start, and their kinds (for the plan's check of what
a reader needs, :meth:`Component.read_kinds`)."""
DATA_COLUMNS = tuple(DATA_KINDS)
"""Columns every ledger has from the start."""


@attrs.define(eq=False)
class StagePlan:
    """One stage's components, in recipe order, and by the hooks they take part in.

    The lists are worked out once: the batch loop runs no filtering of its own.
    """

    index: int
    config: StageConfig
    components: list[Component]
    refiners: list[Component] = attrs.Factory(list)
    selectors: list[Component] = attrs.Factory(list)
    weighters: list[Component] = attrs.Factory(list)
    transfers: list[Component] = attrs.Factory(list)
    backward: list[Component] = attrs.Factory(list)
    after_step: list[Component] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        for comp in self.components:
            kinds, hooks = comp.kinds(), comp.hooks()
            for kind, bucket in (("refine", self.refiners), ("select", self.selectors),
                                 ("weight", self.weighters), ("transfer", self.transfers)):
                if kind in kinds:
                    bucket.append(comp)
            if "backward" in hooks:
                self.backward.append(comp)
            if "after_step" in hooks:
                self.after_step.append(comp)

    @property
    def name(self) -> str:
        return self.config.name


@attrs.define(eq=False)
class RunPlan:
    """A recipe resolved against the installed plugins.

    Attributes:
        recipe: the resolved recipe.
        stages: one :class:`StagePlan` per stage.
        models: per enabled role, its architecture factory and bound parameters.
        augmentations: the training-batch augmentations and their bound parameters.
    """

    recipe: Recipe
    stages: list[StagePlan]
    models: dict[str, tuple[Callable[..., Any], dict[str, Any]]]
    augmentations: list[tuple[Callable[..., Any], dict[str, Any]]]

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.models)


def build_plan(recipe: Recipe, host: PluginHost) -> RunPlan:
    """Resolve and check ``recipe`` against ``host``'s plugins without loading any data.

    Raises:
        RecipeError: the first problem found, naming the file and key path.
    """
    src = recipe.source
    problems = host.configure_problems(recipe)
    if problems:
        raise RecipeError(problems[0], file=src)
    _check_device(recipe)
    _check_loggers(recipe, host)
    data = recipe.data
    _bind(host.datasets, data.dataset, data.params, "data.dataset", "data.params", src)
    _bind(host.noise_models, data.noise.model, data.noise.params, "data.noise.model",
          "data.noise.params", src)
    augmentations = [
        _bind(host.augmentations, a.name, a.params, f"data.augment[{i}].name",
              f"data.augment[{i}].params", src)
        for i, a in enumerate(data.augment)
    ]
    models = {
        role: _bind(host.models, cfg.arch, cfg.params, f"models.{role}.arch",
                    f"models.{role}.params", src)
        for role, cfg in recipe.models.items() if cfg.enabled
    }
    stages = [StagePlan(s, stage, build_components(recipe, host, s))
              for s, stage in enumerate(recipe.stages)]
    _check_roles(recipe, stages, set(models))
    _check_self_taught(recipe, stages)
    _check_backward_taken_once(recipe, stages)
    _check_trained(recipe, stages)
    _check_history_skip(recipe, _check_columns(recipe, stages))
    _check_precision(recipe, stages)
    _check_cached_outputs(recipe)
    return RunPlan(recipe, stages, models, augmentations)


def build_components(recipe: Recipe, host: PluginHost, s: int) -> list[Component]:
    """Instantiate stage ``s``'s enabled components, each validating its own parameters."""
    stage = recipe.stages[s]
    out: list[Component] = []
    for c, comp in enumerate(stage.components):
        key = f"stages[{s}].components[{c}]"
        if not comp.enabled:
            continue
        try:
            cls = host.components.get(comp.use)
        except KdcoreError as exc:
            raise RecipeError(str(exc), file=recipe.source, key=f"{key}.use") from None
        try:
            params = structure(cls.Params, comp.params, f"{key}.params")
        except RecipeError as exc:
            raise exc.at(file=recipe.source) from None
        terms = tuple(comp.terms) or ((comp.label,) if cls.own_terms_only else ())
        spec = ComponentSpec(
            name=comp.label, use=comp.use,
            models=tuple(comp.models if comp.models is not None else stage.train),
            terms=terms, weight=comp.weight,
        )
        try:
            out.append(cls(params, spec))
        except (ValueError, TypeError) as exc:  # a plugin's own check of its parameters
            raise RecipeError(str(exc), file=recipe.source, key=f"{key}.params") from None
    labels = {c.name for c in out}
    for comp in (x for x in stage.components if x.enabled):
        for term in comp.terms:
            if term not in labels:
                raise RecipeError(f"no component labelled '{term}' in this stage",
                                  file=recipe.source, key=f"stages[{s}].components.terms")
    return out


def _bind(registry: Any, name: str, params: dict[str, Any], name_key: str, params_key: str,
          source: str | None) -> tuple[Callable[..., Any], dict[str, Any]]:
    try:
        fn = registry.get(name)
    except KdcoreError as exc:
        raise RecipeError(str(exc), file=source, key=name_key) from None
    try:
        return fn, bind_params(fn, params, params_key)
    except RecipeError as exc:
        raise exc.at(file=source) from None


def _check_device(recipe: Recipe) -> None:
    from kdcore.device import resolve_device

    try:
        device = resolve_device(recipe.run.device)
    except RecipeError as exc:
        raise exc.at(file=recipe.source, key="run.device") from None
    if recipe.run.precision == "fp16" and device.type != "cuda":
        raise RecipeError(f"fp16 needs a GPU (its gradient scaler is CUDA's); on {device} use "
                          f"\"bf16\" or \"fp32\"", file=recipe.source, key="run.precision")


def _check_loggers(recipe: Recipe, host: PluginHost) -> None:
    """Every name of ``run.loggers`` is a registered logger, named once."""
    for i, name in enumerate(recipe.run.loggers):
        key = f"run.loggers[{i}]"
        try:
            host.loggers.get(name)
        except KdcoreError as exc:
            raise RecipeError(str(exc), file=recipe.source, key=key) from None
        if name in recipe.run.loggers[:i]:
            raise RecipeError(f"logger '{name}' is named twice", file=recipe.source, key=key)


def _check_precision(recipe: Recipe, stages: Sequence[StagePlan]) -> None:
    """fp16's gradient scaler scales the engine's backward pass: a component that takes the
    backward pass over would step unscaled gradients."""
    if recipe.run.precision != "fp16":
        return
    for stage in stages:
        for comp in stage.backward:
            raise RecipeError(f"component '{comp.name}' ({comp.spec.use}) runs its own backward "
                              f"pass, which fp16's gradient scaler does not cover; use "
                              f"\"bf16\" or \"fp32\"", file=recipe.source, key="run.precision")


def _check_cached_outputs(recipe: Recipe) -> None:
    """``cache_outputs`` stores a model's outputs on the training inputs as loaded: it needs
    batches that are those inputs, and a stage in which the model is frozen."""
    for role, cfg in recipe.models.items():
        if not (cfg.enabled and cfg.cache_outputs):
            continue
        key = f"models.{role}.cache_outputs"
        if recipe.data.augment:
            raise RecipeError(
                f"'{role}' caches its outputs on the training inputs as loaded, but data.augment "
                f"changes every batch's inputs; drop one of the two", file=recipe.source, key=key)
        if all(role in stage.train for stage in recipe.stages):
            raise RecipeError(
                f"'{role}' is trained in every stage, so it has no outputs to cache (they are "
                f"kept only where it is frozen); remove the key", file=recipe.source, key=key)


def check_distributed(plan: RunPlan, processes: int) -> None:
    """Refuse a run in ``processes`` > 1 processes with a component that cannot compute the
    same there (:attr:`Component.distributed`).

    Raises:
        RecipeError: the first such component, with its reason.
    """
    if processes <= 1:
        return
    for stage in plan.stages:
        for comp in stage.components:
            if comp.distributed is not True:
                why = comp.distributed or "it does not support a distributed run"
                raise RecipeError(
                    f"component '{comp.name}' ({comp.spec.use}) cannot run in {processes} "
                    f"processes: {why}; run it in one process",
                    file=plan.recipe.source,
                    key=f"{_component_key(plan.recipe, stage.index, comp)}.use")


def _component_key(recipe: Recipe, s: int, comp: Component) -> str:
    # the enabled entry: a disabled one may carry the same label
    c = next(c for c, entry in enumerate(recipe.stages[s].components)
             if entry.enabled and entry.label == comp.name)
    return f"stages[{s}].components[{c}]"


def _param_key(recipe: Recipe, s: int, comp: Component, value: str) -> str:
    """The key path of the parameter of ``comp`` that holds ``value`` (its params table when
    no single field does: a role or column named by an override of ``roles``/``reads``)."""
    base = f"{_component_key(recipe, s, comp)}.params"
    if attrs.has(type(comp.params)):
        for field in attrs.fields(type(comp.params)):
            held = getattr(comp.params, field.name)
            if held == value or (isinstance(held, (list, tuple)) and value in held):
                return f"{base}.{field.alias or field.name}"
    return base


def _check_roles(recipe: Recipe, stages: Sequence[StagePlan], roles: set[str]) -> None:
    for stage in stages:
        for comp in stage.components:
            for role in comp.roles():
                if role not in roles:
                    raise RecipeError(
                        f"component '{comp.name}' ({comp.spec.use}) uses model role '{role}'"
                        f"{did_you_mean(role, roles)}, which [models] does not define; "
                        f"roles: {', '.join(sorted(roles)) or 'none'}",
                        file=recipe.source, key=_param_key(recipe, stage.index, comp, role))


def _check_self_taught(recipe: Recipe, stages: Sequence[StagePlan]) -> None:
    """A component serves none of the models it distils from (:attr:`Component.learns_from`)."""
    for stage in stages:
        for comp in stage.components:
            used = set(comp.roles())
            for param in comp.learns_from:
                value = getattr(comp.params, param)
                for role in (value,) if isinstance(value, str) else value:
                    if role not in comp.models or role not in used:
                        continue
                    rest = [m for m in comp.models if m != role]
                    fix = (f"set its models = {json.dumps(rest)}" if rest else
                           f"name another model in params.{param}")
                    raise RecipeError(
                        f"component '{comp.name}' ({comp.spec.use}) would distil '{role}' from "
                        f"itself (params.{param}), a term without gradient: it serves "
                        f"{json.dumps(list(comp.models))} (its models, or else the stage's "
                        f"train); {fix}", file=recipe.source,
                        key=f"{_component_key(recipe, stage.index, comp)}.models")


def _check_backward_taken_once(recipe: Recipe, stages: Sequence[StagePlan]) -> None:
    """At most one component of a stage takes over a trained model's backward pass
    (:meth:`Component.backward_roles`): the first in recipe order would win it, and the other
    stop the run at the first batch, or train on a pass it never ran."""
    for stage in stages:
        taken: dict[str, Component] = {}
        for comp in stage.components:
            for role in comp.backward_roles():
                first = taken.setdefault(role, comp)
                if first is not comp and role in stage.config.train:
                    raise RecipeError(
                        f"components '{first.name}' ({first.spec.use}) and '{comp.name}' "
                        f"({comp.spec.use}) both take over the backward pass of '{role}', and "
                        f"only the first would get it; keep one (a mutual method with order = "
                        f"\"simultaneous\" takes none)", file=recipe.source,
                        key=_component_key(recipe, stage.index, comp))


def _check_trained(recipe: Recipe, stages: Sequence[StagePlan]) -> None:
    """A model a stage trains gets a loss term there: else its optimiser only decays it."""
    for stage in stages:
        termed = {role for comp in stage.transfers for role in comp.models}
        for role in stage.config.train:
            if role not in termed:
                raise RecipeError(
                    f"stage '{stage.config.name}' trains '{role}', but none of its components "
                    f"gives '{role}' a loss term; add one (ce, say), or leave '{role}' out of "
                    "train", file=recipe.source, key=f"stages[{stage.index}].train")


def _check_columns(recipe: Recipe, stages: Sequence[StagePlan]) -> set[str]:
    """Every column a component reads is written before it, in stage order, and of the kind
    it needs where both the reader and the last writer say. Returns every column the run
    writes."""
    available: set[str] = set(DATA_COLUMNS)
    kinds: dict[str, tuple[str, str]] = {c: (k, "the data") for c, k in DATA_KINDS.items()}
    for stage in stages:
        # per-sample losses and training logits reach the ledger at the end of a stage's first
        # epoch, so they serve later stages
        epoch_end: set[str] = {f"logits/{r}" for r in stage.config.train}
        for comp in stage.components:
            for column in comp.reads():
                if column not in available:
                    raise RecipeError(
                        f"component '{comp.name}' ({comp.spec.use}) reads ledger column "
                        f"'{column}'{did_you_mean(column, available)}, which nothing placed "
                        f"before it writes; written by then: {', '.join(sorted(available))}",
                        file=recipe.source, key=_param_key(recipe, stage.index, comp, column))
            for column, need in comp.read_kinds().items():
                needs = (need,) if isinstance(need, str) else tuple(need)
                have, writer = kinds.get(column, (needs[0], ""))
                if have not in needs:
                    raise RecipeError(
                        f"component '{comp.name}' ({comp.spec.use}) reads ledger column "
                        f"'{column}' as a column of kind {_either(needs)}, but {writer} "
                        f"writes it as kind {have}", file=recipe.source,
                        key=_param_key(recipe, stage.index, comp, column))
            _check_writes(recipe, stage, comp, available | epoch_end)
            available.update(comp.written_columns())
            declared = comp.written_column_kinds()
            for column in comp.written_columns():
                if column in declared:
                    kinds[column] = (declared[column], f"'{comp.name}'")
                else:
                    kinds.pop(column, None)  # rewritten without a declared kind
            if "transfer" in comp.kinds():
                epoch_end.add(f"loss/{comp.name}")
                epoch_end.update(f"loss/{comp.name}/{r}" for r in comp.models)
        available |= epoch_end
        # the engine's records: per-sample losses and training logits, as values
        kinds.update({column: ("value", "the engine") for column in epoch_end})
    return available


def _check_writes(recipe: Recipe, stage: StagePlan, comp: Component, before: set[str]) -> None:
    """Each column in ``comp``'s ``writes`` can be kept by the history beside the others."""
    for column in dict.fromkeys(w.format(name=comp.name) for w in comp.writes):
        problem = declared_column_problem(
            column, before | set(comp.written_columns()) - {column}, recipe.models)
        if problem:
            raise RecipeError(f"component '{comp.name}' ({comp.spec.use}) declares a ledger "
                              f"column it cannot write: {problem}", file=recipe.source,
                              key=f"{_component_key(recipe, stage.index, comp)}.use")


def _check_history_skip(recipe: Recipe, written: set[str]) -> None:
    """Warn of a ``run.history_skip`` pattern that matches no column the recipe writes: a
    misspelt one would leave the history as large as before, unnoticed."""
    for pattern in recipe.run.history_skip:
        if not any(fnmatch.fnmatchcase(column, pattern) for column in written):
            logger.warning(f"run.history_skip: '{pattern}' matches none of the columns this "
                           f"recipe writes: {', '.join(sorted(written))}")


def _either(kinds: Sequence[str]) -> str:
    return kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"


__all__ = ["DATA_COLUMNS", "RunPlan", "StagePlan", "build_components", "build_plan"]
