"""The run's plan: everything a recipe asks for, resolved and checked once, before training.

``kdcore check``, the start banner and the run build the plan through :func:`build_plan`, one
code path, so a recipe that ``check`` accepts does not fail while the run is being set up.
The plan instantiates every stage's components once per run (each validating its own
parameters), resolves the model roles they use, checks the declared data flow
(:mod:`kdcore.dataflow`) and binds the parameters of the dataset loader, the noise model, the
architectures and the augmentations. Loading the data and building the models is
:mod:`kdcore.prepare`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from kdcore.component import Component, ComponentSpec
from kdcore.config import bind_params, structure
from kdcore.dataflow import check_columns, check_history_skip, per_model_losses
from kdcore.errors import KdcoreError, RecipeError, did_you_mean
from kdcore.plan_keys import component_key, param_key
from kdcore.plugins import PluginHost
from kdcore.recipe import Recipe, StageConfig


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
        per_model_losses: the transfer terms' labels whose per-sample losses are recorded per
            model, ``loss/<name>/<role>`` (:func:`kdcore.dataflow.per_model_losses`).
    """

    recipe: Recipe
    stages: list[StagePlan]
    models: dict[str, tuple[Callable[..., Any], dict[str, Any]]]
    augmentations: list[tuple[Callable[..., Any], dict[str, Any]]]
    per_model_losses: frozenset[str] = frozenset()

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
    check_history_skip(recipe, check_columns(recipe, stages))
    _check_precision(recipe, stages)
    _check_cached_outputs(recipe)
    return RunPlan(recipe, stages, models, augmentations,
                   per_model_losses(c for stage in stages for c in stage.components))


def placed_terms(cls: type[Component], terms: Sequence[str], label: str) -> tuple[str, ...]:
    """The terms a component placed with ``terms`` under ``label`` acts on: those listed, else
    its own term alone where its class says ``own_terms_only``, else every term (empty)."""
    return tuple(terms) or ((label,) if cls.own_terms_only else ())


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
        spec = ComponentSpec(
            name=comp.label, use=comp.use,
            models=tuple(comp.models if comp.models is not None else stage.train),
            terms=placed_terms(cls, comp.terms, comp.label), weight=comp.weight,
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
    backward pass over would step unscaled gradients. A component that cannot work on
    compiled models (:attr:`Component.compiled`) is refused with ``run.compile``: MLC's run
    had stopped at its first step."""
    for stage in stages if recipe.run.compile else ():
        for comp in stage.components:
            if comp.compiled is not True:
                why = comp.compiled or "it does not support compiled models"
                raise RecipeError(f"component '{comp.name}' ({comp.spec.use}) cannot work on "
                                  f"compiled models: {why}; set run.compile = false",
                                  file=recipe.source, key="run.compile")
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
                    key=f"{component_key(plan.recipe, stage.index, comp)}.use")


def _check_roles(recipe: Recipe, stages: Sequence[StagePlan], roles: set[str]) -> None:
    """Every role a component uses is one of [models]; one whose learning rate it follows
    (:meth:`Component.lr_roles`) is trained by a stage up to its own, the first to give the
    model an optimiser."""
    trained: set[str] = set()
    for stage in stages:
        trained.update(stage.config.train)
        for comp in stage.components:
            for role in comp.roles():
                if role not in roles:
                    why = ("', which [models] disables (enabled = false)"
                           if role in recipe.models else
                           f"'{did_you_mean(role, roles)}, which [models] does not define")
                    raise RecipeError(
                        f"component '{comp.name}' ({comp.spec.use}) uses model role '{role}"
                        f"{why}; roles: {', '.join(sorted(roles)) or 'none'}",
                        file=recipe.source, key=param_key(recipe, stage.index, comp, role))
            for role in comp.lr_roles():
                if role not in trained:
                    raise RecipeError(
                        f"component '{comp.name}' ({comp.spec.use}) follows the learning rate "
                        f"of '{role}', which no stage up to '{stage.config.name}' trains (it "
                        f"has no optimiser yet); give the component a learning rate of its "
                        f"own, or train '{role}' by then", file=recipe.source,
                        key=component_key(recipe, stage.index, comp))


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
                        key=f"{component_key(recipe, stage.index, comp)}.models")


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
                        key=component_key(recipe, stage.index, comp))


def _check_trained(recipe: Recipe, stages: Sequence[StagePlan]) -> None:
    """A model a stage trains gets a loss term there (else its optimiser only decays it), and
    one of them a term with a gradient (else none can learn, and the first batch stops)."""
    for stage in stages:
        termed = {role for comp in stage.transfers for role in comp.models}
        train = stage.config.train
        for role in train:
            if role not in termed:
                raise RecipeError(
                    f"stage '{stage.config.name}' trains '{role}', but none of its components "
                    f"gives '{role}' a loss term; add one (ce, say), or leave '{role}' out of "
                    "train", file=recipe.source, key=f"stages[{stage.index}].train")
        if train and not any(role in c.models and role not in c.gradient_free_roles()
                             for c in stage.transfers for role in train):
            free = ", ".join(f"'{c.name}' ({c.spec.use})" for c in stage.transfers
                             if not set(train).isdisjoint(c.models))
            raise RecipeError(
                f"stage '{stage.config.name}' trains {', '.join(map(repr, train))}, but every "
                f"term it gives {'them' if len(train) > 1 else 'it'} carries no gradient "
                f"({free}: computed from detached outputs), so nothing can learn; add a term "
                "with a gradient (ce, say)", file=recipe.source,
                key=f"stages[{stage.index}].train")


__all__ = ["RunPlan", "StagePlan", "build_components", "build_plan"]
