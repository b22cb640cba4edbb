"""Building a run's parts from its recipe: models, optimisers, schedules, components."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdcore.component import Component, ComponentSpec
from kdcore.config import structure
from kdcore.errors import KdcoreError, RecipeError
from kdcore.models.base import KDModel, ModelSpec
from kdcore.plugins import PluginHost
from kdcore.recipe import ModelConfig, OptimizerConfig, StageConfig
from kdcore.run import Run, role_seed


def build_model(role: str, cfg: ModelConfig, host: PluginHost, spec: ModelSpec, seed: int
                ) -> KDModel:
    from kdcore.config import bind_params

    factory = host.models.get(cfg.arch)
    params = bind_params(factory, cfg.params, f"models.{role}.params")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(role_seed(seed, role))
        model = factory(spec, **params)
    if not isinstance(model, nn.Module):
        raise KdcoreError(f"architecture '{cfg.arch}' did not return a torch module")
    return model


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    # every parameter, trainable now or not: a stage freezes a role by requires_grad, and a
    # frozen parameter has no gradient, so the optimiser leaves it alone
    params = list(model.parameters())
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def scheduled_lr(cfg: ModelConfig, epoch: int, epochs: int) -> float:
    """The learning rate at a role's ``epoch``-th training epoch out of ``epochs``.

    Epochs count over every stage that trains the role, so a schedule spans warm-up and later
    stages alike. A pure function: nothing needs checkpointing.
    """
    base = cfg.optimizer.lr
    sched = cfg.schedule
    if sched.name == "multistep":
        return base * sched.gamma ** sum(epoch >= m for m in sched.milestones)
    if sched.name == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    return base


def build_components(run: Run, stage: StageConfig, stage_key: str) -> list[Component]:
    """Instantiate a stage's enabled components, each validating its own parameters."""
    out: list[Component] = []
    for c, comp in enumerate(stage.components):
        key = f"{stage_key}.components[{c}]"
        if not comp.enabled:
            continue
        cls = _component_class(run.host, comp.use, f"{key}.use", run.recipe.source)
        try:
            params = structure(cls.Params, comp.params, f"{key}.params")
        except RecipeError as exc:
            raise exc.at(file=run.recipe.source) from None
        terms = tuple(comp.terms) or ((comp.label,) if cls.own_terms_only else ())
        spec = ComponentSpec(
            name=comp.label, use=comp.use,
            models=tuple(comp.models if comp.models is not None else stage.train),
            terms=terms, weight=comp.weight,
        )
        out.append(cls(params, spec))
    labels = {c.name for c in out}
    for comp in (x for x in stage.components if x.enabled):
        for term in comp.terms:
            if term not in labels:
                raise RecipeError(f"no component labelled '{term}' in this stage",
                                  file=run.recipe.source, key=f"{stage_key}.components.terms")
    return out


def _component_class(host: PluginHost, use: str, key: str, source: str | None
                     ) -> type[Component]:
    try:
        return host.components.get(use)
    except KdcoreError as exc:
        raise RecipeError(str(exc), file=source, key=key) from None
