"""Stages -> epochs -> batches: the training engine.

The engine knows no method by name. It builds the data, the models and the ledger, then runs each
stage: components are called in the recipe's order (see :mod:`kdcore.component` for how their
results combine), every model role the stage trains gets its optimiser step, the ledger and the
metrics go into the HDF5 history at each epoch end, and a checkpoint makes the run resumable.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from loguru import logger

from kdcore import checkpoint as ckpt
from kdcore.build import (
    build_components,
    build_model,
    build_optimizer,
    scheduled_lr,
)
from kdcore.component import Batch, Component
from kdcore.errors import KdcoreError, RecipeError, TrainingDiverged
from kdcore.history import HistoryWriter
from kdcore.ledger import Ledger
from kdcore.losses import one_hot
from kdcore.metrics import accuracy, balanced_accuracy, selection_quality
from kdcore.models.base import ModelSpec
from kdcore.plugins import PluginHost
from kdcore.recipe import Recipe, StageConfig
from kdcore.run import Run, resolve_device
from kdcore.rundata import build_run_data

# Steps between two checks that the losses are finite: each check waits for the device, so
# checking every step would stall a GPU (on the CPU it is ~1% of a small step); a divergence is
# still reported with its exact step and term.
FINITE_CHECK_EVERY = 32


class _StagePlan(NamedTuple):
    """The stage's components by the hooks they take part in, in recipe order (worked out
    once per stage: the batch loop then runs no filtering of its own)."""

    refiners: list[Component]
    selectors: list[Component]
    weighters: list[Component]
    transfers: list[Component]
    backward: list[Component]
    after_step: list[Component]

    @classmethod
    def of(cls, comps: Sequence[Component]) -> _StagePlan:
        return cls([c for c in comps if "refinement" in c.kinds()],
                   [c for c in comps if "selection" in c.kinds()],
                   [c for c in comps if "weighting" in c.kinds()],
                   [c for c in comps if "transfer" in c.kinds()],
                   [c for c in comps if "backward" in c.hooks()],
                   [c for c in comps if "after_step" in c.hooks()])


# -- the trainer -----------------------------------------------------------------------------


class Trainer:
    """Runs a resolved recipe in ``run_dir``.

    Args:
        recipe: the resolved recipe.
        run_dir: the run directory (created).
        host: the loaded plugins.
        resume: continue from ``run_dir/checkpoint.pt`` (must exist).
        progress: show a progress bar over batches (defaults to "stderr is a terminal").
    """

    def __init__(self, recipe: Recipe, run_dir: Path, host: PluginHost, *, resume: bool = False,
                 progress: bool | None = None):
        self.recipe = recipe
        self.host = host
        self.run_dir = run_dir
        self.resume = resume
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.history = HistoryWriter(run_dir / "history.h5")
        self.run = Run(recipe, run_dir, host, resolve_device(recipe.run.device))
        self.run._write_data = self.history.add_data
        self._order_gen = torch.Generator().manual_seed(recipe.run.seed + 2)
        self._augment_gen = torch.Generator().manual_seed(recipe.run.seed + 3)
        self._best: dict[str, dict[str, Any]] = {}
        self._best_states: dict[str, dict[str, torch.Tensor]] = {}
        self._carried: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, tuple[str, list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self._checkpointed_at = time.monotonic()
        # (step, role, loss, {term: value}) of the steps since the last finiteness check
        self._unchecked: list[tuple[int, str, torch.Tensor, dict[str, torch.Tensor]]] = []
        # base_target and the versions of it and of the noisy labels, while the epoch's targets
        # are the one-hot noisy labels
        self._hard_source: tuple[torch.Tensor, tuple[int, int]] | None = None
        self._plan = _StagePlan.of([])
        self._saver = ckpt.BackgroundSaver(background=self.run.device.type == "cuda")
        self._observes_batches = bool(host.hook.kdcore_batch_end.get_hookimpls())
        self.summary: dict[str, Any] = {}

    # -- set-up -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Seed, build data, models and ledger, check components; write the history head."""
        recipe, run = self.recipe, self.run
        if recipe.run.threads:
            torch.set_num_threads(recipe.run.threads)
        torch.manual_seed(recipe.run.seed)
        problems = [p for ps in self.host.hook.kdcore_configure(recipe=recipe) if ps for p in ps]
        if problems:
            raise RecipeError(problems[0], file=recipe.source)
        # Build every stage's components once up front so that a bad parameter fails before
        # any training time is spent.
        for s, stage in enumerate(recipe.stages):
            build_components(run, stage, f"stages[{s}]")
        run.data = data = build_run_data(recipe.data, self.host, recipe.run.seed, run.device)
        spec = ModelSpec(tuple(data.train.input_shape), data.num_classes)
        for role, cfg in recipe.models.items():
            if not cfg.enabled:
                continue
            run.models[role] = build_model(role, cfg, self.host, spec, recipe.run.seed).to(
                run.device)
        for s, stage in enumerate(recipe.stages):
            for comp in build_components(run, stage, f"stages[{s}]"):
                comp.adapt_models(run)
        for role, cfg in recipe.models.items():  # after adapt_models: a saved connector fits
            if cfg.enabled and cfg.checkpoint:
                run.models[role].load_state_dict(ckpt.load_weights(cfg.checkpoint, role))
                run.models[role].to(run.device)
        run.ledger = ledger = Ledger(len(data.train), run.device)
        ledger.add("noisy_label", data.train_noisy, producer="data", kind="label", snapshot=False)
        ledger.add("clean_label", data.train.y, producer="data", kind="label", snapshot=False)
        ledger.add("clean_mask", data.train_noisy == data.train.y, producer="data", kind="mask",
                   snapshot=False)
        # base_target: the epoch-level targets (label propagation writes them); target: what
        # each sample was trained on this epoch, after the batch-level refinement chain
        noisy_one_hot = one_hot(data.train_noisy, data.num_classes)
        ledger.add("base_target", noisy_one_hot, producer="labels", kind="target",
                   snapshot=False)
        ledger.add("target", noisy_one_hot, producer="labels", kind="target")
        run.augmentations = [
            (self.host.augmentations.get(a.name), a.params) for a in recipe.data.augment
        ]
        if not self.resume:
            self.history.create(
                recipe_toml=recipe.to_toml(), versions=self.host.versions(),
                num_classes=data.num_classes, class_names=list(data.class_names),
                constants={
                    "noisy_label": data.train_noisy.int(), "clean_label": data.train.y.int(),
                    "clean_mask": data.train_noisy == data.train.y,
                    "sample_id": data.train_source.int(),
                },
                transition_matrix=data.transition,
            )

    def banner(self) -> str:
        """The start-of-run summary: data, models and each stage's components in order."""
        d, r = self.run.data, self.recipe
        lines = [
            f"run '{r.run.name}' seed {r.run.seed} on {self.run.device} -> {self.run_dir}",
            f"data {r.data.dataset}: train {len(d.train)} (noise {r.data.noise.model}, realised "
            f"rate {d.noise_rate:.3f}), val {len(d.val)}, gold {len(d.gold)}, test {len(d.test)}",
        ]
        for role, m in self.run.models.items():
            n = sum(p.numel() for p in m.parameters())
            lines.append(f"model {role}: {r.models[role].arch} ({n:,} parameters)")
        for s, stage in enumerate(r.stages):
            lines.append(f"stage {s} '{stage.name}': {stage.epochs} epochs, trains "
                         f"{', '.join(stage.train) or 'nothing'}, keeps {stage.keep}")
            comps = build_components(self.run, stage, f"stages[{s}]")
            for i, comp in enumerate(comps, 1):
                kinds = "+".join(comp.kinds()) or "lifecycle"
                lines.append(f"  {i}. {comp.name} ({comp.spec.use}, {kinds}) on "
                             f"{', '.join(comp.models)}")
        return "\n".join(lines)

    # -- the run ----------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Run (or resume) every stage; returns the summary also written to summary.json."""
        with self.host.activate():  # loaders and helpers called in the run see its plugins
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        run = self.run
        position = {"stage": 0, "epoch": 0, "history_rows": 0}
        state: dict[str, Any] | None = None
        if self.resume:
            state = ckpt.load(self.run_dir / ckpt.CHECKPOINT)
            position = state["position"]
            self.history.truncate(int(position["history_rows"]))
            for role, sd in state["models"].items():
                run.models[role].load_state_dict(sd)
            for role, sd in state["optimizers"].items():
                self._optimizer(role).load_state_dict(sd)
            self._best = state["best"]
            self._best_states = state["best_states"]
            self._carried = state["carried"]
            self.summary = state["summary"]
            run.step = int(position["step"])
            run.resumed = True
        for line in self.banner().splitlines():
            logger.info(line)
        self.host.hook.kdcore_run_start(run=run)
        try:
            for s in range(int(position["stage"]), len(self.recipe.stages)):
                start = int(position["epoch"]) if s == int(position["stage"]) else 0
                self._run_stage(s, start, state if s == int(position["stage"]) else None)
                state = None
        finally:  # a run that stops for any reason leaves its last checkpoint complete
            self._saver.wait()
        self.host.hook.kdcore_run_end(run=run, summary=self.summary)
        (self.run_dir / "summary.json").write_text(json.dumps(self.summary, indent=2))
        return self.summary

    def _run_stage(self, s: int, start_epoch: int, state: dict[str, Any] | None) -> None:
        run, stage = self.run, self.recipe.stages[s]
        run.stage, run.stage_index = stage, s
        run.components = build_components(run, stage, f"stages[{s}]")
        self._plan = _StagePlan.of(run.components)
        for role, model in run.models.items():
            model.train(role in stage.train)
            for p in model.parameters():
                p.requires_grad_(role in stage.train)
        for role in stage.train:
            self._optimizer(role)
        for comp in run.components:
            comp.setup(run)
        if state is not None:
            self._restore(state)
        if start_epoch == 0:
            self._best = {k: v for k, v in self._best.items() if not k.startswith(f"{s}/")}
            for comp in run.components:
                carried = self._carried.get(comp.name)
                if comp.carry_state and carried and carried["use"] == comp.spec.use:
                    comp.load_state_dict(carried["state"])
            for comp in run.components:
                comp.on_stage_start(run)
        self.host.hook.kdcore_stage_start(run=run, stage=stage)
        run.steps_per_epoch = math.ceil(len(run.data.train) / self.recipe.data.batch_size) \
            if stage.train else 0
        run.stage_step = start_epoch * run.steps_per_epoch
        for epoch in range(start_epoch, stage.epochs):
            self._run_epoch(s, stage, epoch)
        for comp in run.components:
            comp.on_stage_end(run)
        if stage.keep == "best_val":
            for role in stage.train:
                best = self._best_states.get(f"{s}/{role}")
                if best is not None:
                    run.models[role].load_state_dict(best)
                    run._bump(role)
                    logger.info(f"stage '{stage.name}': {role} restored to its best-validation "
                                f"epoch {self._best[f'{s}/{role}']['epoch']}")
        for role in stage.train:
            self._record_summary(s, stage, role)
            ckpt.save_weights(run.models[role], self.run_dir / "models" / f"{role}.pt")
        self.host.hook.kdcore_stage_end(run=run, stage=stage)
        # a component of the same name and kind in the next stage continues from this state
        self._carried = {c.name: {"use": c.spec.use, "state": c.state_dict()}
                         for c in run.components}
        run.components = []
        self._save_checkpoint(s + 1, 0)

    def _optimizer(self, role: str) -> torch.optim.Optimizer:
        opt = self.run.optimizers.get(role)
        if opt is None:
            opt = self.run.optimizers[role] = build_optimizer(
                self.run.models[role], self.recipe.models[role].optimizer)
        return opt

    def _lr_for_epoch(self, s: int, stage: StageConfig, epoch: int) -> None:
        stages = self.recipe.stages
        for role in stage.train:
            done = sum(st.epochs for st in stages[:s] if role in st.train)
            total = sum(st.epochs for st in stages if role in st.train)
            lr = scheduled_lr(self.recipe.models[role], done + epoch, total)
            for group in self.run.optimizers[role].param_groups:
                group["lr"] = lr

    def _run_epoch(self, s: int, stage: StageConfig, epoch: int) -> None:
        run = self.run
        run.epoch = epoch
        t0 = time.perf_counter()
        self._lr_for_epoch(s, stage, epoch)
        for comp in run.components:
            comp.on_epoch_start(run, epoch)
        self.host.hook.kdcore_epoch_start(run=run, epoch=epoch)
        self._hard_source = self._one_hot_labels()
        # per-term batch values, appended (no tensor op per batch) and summed at the epoch end
        sums: dict[str, list[torch.Tensor]] = defaultdict(list)
        batches = 0
        n = len(run.data.train)
        bs = self.recipe.data.batch_size
        order = torch.randperm(n, generator=self._order_gen).to(run.device)
        starts = range(0, n, bs)
        if self.progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=f"{stage.name} {epoch + 1}/{stage.epochs}", leave=False)
        if stage.train:
            for start in starts:
                index = order[start:start + bs]
                self._train_batch(index, sums)
                batches += 1
            self._check_finite()
            self._flush_pending()
        if not self._plan.refiners:
            # no batch-level refiner: the epoch-level targets are what every sample trained on
            led = run.ledger
            led.add("target", led["base_target"], producer=led.producer("base_target"),
                    kind="target")
        metrics: dict[str, float] = {k: float(torch.stack(v).sum()) / max(batches, 1)
                                     for k, v in sums.items()}
        metrics.update(self._evaluate(s, stage))
        metrics.update(self._ledger_metrics())
        for role in stage.train:
            metrics[f"lr/{role}"] = run.lr(role)
        metrics.update(run._epoch_metrics)
        for comp in run.components:
            comp.on_epoch_end(run, epoch, metrics)
        self.host.hook.kdcore_epoch_end(run=run, epoch=epoch, metrics=metrics)
        metrics["time/epoch"] = time.perf_counter() - t0
        row = self.history.append_epoch(stage=stage.name, epoch=epoch, metrics=metrics,
                                        columns=dict(run.ledger.items()))
        run._epoch_metrics = {}  # what on_stage_start logged went into this first row
        self._log_epoch(stage, epoch, metrics)
        # the stage's end is checkpointed by _run_stage; between, at most every interval
        interval = self.recipe.run.checkpoint_interval_s
        if epoch + 1 < stage.epochs and time.monotonic() - self._checkpointed_at >= interval:
            self._save_checkpoint(s, epoch + 1, history_rows=row + 1)

    # -- one batch --------------------------------------------------------------------------

    def _train_batch(self, index: torch.Tensor, sums: dict[str, list[torch.Tensor]]) -> None:
        run = self.run
        data, ledger = run.data, run.ledger
        x = data.inputs(data.train, index)
        x = run.augment(x, self._augment_gen)
        base, noisy = ledger["base_target"], data.train_noisy[index]
        src = self._hard_source
        hard = noisy if src is not None and src[0] is base and src[1] == (
            base._version, data.train_noisy._version) else None
        batch = Batch(run, index, x, noisy, None, run.step, hard, targets_from=base)
        trained_roles = run.stage.train
        for role in trained_roles:
            run.optimizers[role].zero_grad(set_to_none=True)
        plan = self._plan
        if plan.refiners:
            targets = batch.targets
            for comp in plan.refiners:
                targets = comp.refine(batch, targets)
            batch.targets = targets
            ledger.write("target", index, targets, producer=plan.refiners[-1].name,
                         kind="target")
        masks = self._collect(batch, plan.selectors, "select") if plan.selectors else []
        weights = self._collect(batch, plan.weighters, "weight") if plan.weighters else []
        losses: dict[str, torch.Tensor] = {}
        terms: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        for comp in plan.transfers:
            out = comp.transfer(batch)
            if out is None:
                continue
            per_role = out if isinstance(out, Mapping) else {r: out for r in comp.models}
            for role, per_sample in per_role.items():
                term = self._reduce(comp, role, per_sample, masks, weights)
                if per_sample.dim() == 1:
                    col = f"loss/{comp.name}" if len(per_role) == 1 else f"loss/{comp.name}/{role}"
                    self._defer(batch, col, per_sample, comp.name)
                value = term.detach()
                sums[f"train/{role}/{comp.name}"].append(value)
                terms[role][comp.name] = value
                weighted = term if comp.spec.weight == 1.0 else comp.spec.weight * term
                losses[role] = losses[role] + weighted if role in losses else weighted
        trained = [r for r in losses if run.trains(r)]
        for role in trained_roles:
            out = batch._outputs.get(role)
            if out is not None:  # training dynamics, as Dataset Cartography records them
                self._defer(batch, f"logits/{role}", out.logits, role)
        for role in trained:
            loss = losses[role].detach()
            sums[f"train/{role}/loss"].append(loss)
            self._unchecked.append((run.step, role, loss, terms[role]))
        plain: list[torch.Tensor] = []
        for role in trained:
            if not any(c.backward(batch, role, losses[role]) for c in plan.backward):
                plain.append(losses[role])
        if plain:
            torch.stack(plain).sum().backward() if len(plain) > 1 else plain[0].backward()
        for role in trained_roles:
            if role not in run._stepped:
                run.optimizers[role].step()
            run._bump(role)
        run._stepped.clear()
        if len(self._unchecked) >= FINITE_CHECK_EVERY:
            self._check_finite()
        run.step += 1
        run.stage_step += 1
        for comp in plan.after_step:
            comp.after_step(batch)
        if self._observes_batches:
            self.host.hook.kdcore_batch_end(
                run=run, batch=batch, losses={r: losses[r] for r in trained})

    def _defer(self, batch: Batch, column: str, values: torch.Tensor, producer: str) -> None:
        """Queue a per-sample record (losses, logits) for one ledger write at the epoch end
        (two index writes per batch cost more than the rest of the engine's bookkeeping); the
        batch's own copy is in ``batch.records`` at once."""
        values = values.detach()
        batch.records[column] = values
        self._pending.setdefault(column, (producer, []))[1].append((batch.index, values))

    def _flush_pending(self) -> None:
        for column, (producer, parts) in self._pending.items():
            index = torch.cat([i for i, _ in parts])
            values = torch.cat([v for _, v in parts])
            self.run.ledger.write(column, index, values, producer=producer, kind="value")
        self._pending = {}

    def _collect(self, batch: Batch, comps: Sequence[Component], hook: str
                 ) -> list[tuple[Component, str, torch.Tensor]]:
        """Masks or weights as (component, role, tensor); also written to the ledger."""
        out: list[tuple[Component, str, torch.Tensor]] = []
        kind = "mask" if hook == "select" else "weight"
        for comp in comps:
            result = getattr(comp, hook)(batch)
            if result is None:
                continue
            per_role = result if isinstance(result, Mapping) else {r: result for r in comp.models}
            shared = not isinstance(result, Mapping)
            for role, value in per_role.items():
                col = f"{hook}/{comp.name}" if shared else f"{hook}/{comp.name}/{role}"
                self.run.ledger.write(col, batch.index, value, producer=comp.name, kind=kind)
                out.append((comp, role, value))
                if shared:  # one column for all roles
                    out.extend((comp, r, value) for r in comp.models if r != role)
                    break
        return out

    @staticmethod
    def _reduce(comp: Component, role: str, per_sample: torch.Tensor,
                masks: list[tuple[Component, str, torch.Tensor]],
                weights: list[tuple[Component, str, torch.Tensor]]) -> torch.Tensor:
        """``sum(mask * weight * loss) / sum(mask)`` over the batch, for one term and role."""
        if per_sample.dim() == 0:
            return per_sample
        if not masks and not weights:
            return per_sample.mean()

        def applies(src: Component, r: str) -> bool:
            return r == role and (not src.spec.terms or comp.name in src.spec.terms)

        mask = None
        for src, r, m in masks:
            if applies(src, r):
                m = m.to(per_sample.dtype)
                mask = m if mask is None else mask * m
        weight = None
        for src, r, w in weights:
            if applies(src, r):
                weight = w if weight is None else weight * w
        value = per_sample if weight is None else per_sample * weight
        if mask is None:
            return value.mean()
        return (value * mask).sum() / mask.sum().clamp_min(1.0)

    def _check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` at the first step since the last check whose loss
        is not finite, naming the term that made it so."""
        window, self._unchecked = self._unchecked, []
        if not window or bool(torch.isfinite(torch.stack([w[2] for w in window])).all()):
            return
        step, role, _, terms = next(w for w in window if not bool(torch.isfinite(w[2])))
        term = next((name for name, v in terms.items() if not bool(torch.isfinite(v))), "?")
        comp = next((c for c in self.run.components if c.name == term), None)
        use = f" (component '{comp.spec.use}')" if comp else ""
        raise TrainingDiverged(
            f"loss of model '{role}' is not finite at stage '{self.run.stage.name}' epoch "
            f"{self.run.epoch}, step {step}: term '{term}'{use}; the history and the "
            f"last checkpoint hold every completed epoch"
        )

    def _one_hot_labels(self) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """``(base_target, (its version, the noisy labels' version))`` when the base targets
        are exactly the one-hot noisy labels; batches then carry those labels as
        ``hard_targets`` until either tensor is replaced or edited in place (a version
        moves)."""
        base = self.run.ledger["base_target"]
        noisy = self.run.data.train_noisy
        if not torch.equal(base, one_hot(noisy, base.shape[1], base.dtype)):
            return None
        return base, (base._version, noisy._version)

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self, s: int, stage: StageConfig) -> dict[str, float]:
        run, data = self.run, self.run.data
        out: dict[str, float] = {}
        for role in stage.eval_roles:
            model = run.models[role]
            was = model.training
            model.eval()
            preds = {}
            for split in ("val", "test"):
                ds = data.split(split)
                p = [model(data.inputs(ds, i))[0].argmax(1)
                     for i in data.batches(ds, self.recipe.data.eval_batch_size)]
                preds[split] = torch.cat(p) if p else torch.empty(0, dtype=torch.long)
            model.train(was)
            c = data.num_classes
            out[f"val/{role}/acc"] = accuracy(preds["val"], data.val_noisy)
            out[f"val/{role}/acc_clean"] = accuracy(preds["val"], data.val.y)
            out[f"test/{role}/acc"] = accuracy(preds["test"], data.test.y)
            out[f"test/{role}/bacc"] = balanced_accuracy(preds["test"], data.test.y, c)
            if role in stage.train:
                self._track_best(s, role, out)
        return out

    def _track_best(self, s: int, role: str, metrics: Mapping[str, float]) -> None:
        key = f"{s}/{role}"
        val = metrics[f"val/{role}/acc"]
        best = self._best.get(key)
        if best is None or val > best["val_acc"]:
            self._best[key] = {"epoch": self.run.epoch, "val_acc": val,
                               "test_acc": metrics[f"test/{role}/acc"],
                               "test_bacc": metrics[f"test/{role}/bacc"]}
            if self.recipe.stages[s].keep == "best_val":
                self._best_states[key] = {k: v.detach().clone()
                                          for k, v in self.run.models[role].state_dict().items()}
        self._best[key]["last_test_acc"] = metrics[f"test/{role}/acc"]
        self._best[key]["last_test_bacc"] = metrics[f"test/{role}/bacc"]
        self._best[key]["last_val_acc"] = val

    def _ledger_metrics(self) -> dict[str, float]:
        """Refined-label accuracy and selection quality against the true labels."""
        ledger = self.run.ledger
        clean = ledger["clean_mask"]
        truth = ledger["clean_label"]
        out = {
            "label/acc": accuracy(ledger["target"].argmax(1), truth),
            "label/noisy_acc": float(clean.double().mean()),
        }
        for name, column in ledger.items():
            if name.startswith("select/") and column.kind == "mask":
                q = selection_quality(column.data, clean)
                for k, v in q.items():
                    out[f"{name}/{k}"] = v
        return out

    def _record_summary(self, s: int, stage: StageConfig, role: str) -> None:
        best = self._best.get(f"{s}/{role}")
        if best is None:
            return
        self.summary[role] = {"stage": stage.name, "best_val_epoch": best["epoch"],
                              "val_acc": best["val_acc"], "test_acc_at_best_val": best["test_acc"],
                              "test_bacc_at_best_val": best["test_bacc"],
                              "last_test_acc": best["last_test_acc"],
                              "last_test_bacc": best["last_test_bacc"],
                              "kept": stage.keep}

    def _log_epoch(self, stage: StageConfig, epoch: int, metrics: Mapping[str, float]) -> None:
        parts = [f"{stage.name} {epoch + 1}/{stage.epochs}"]
        for role in stage.train:
            if f"train/{role}/loss" in metrics:
                parts.append(f"{role} loss {metrics[f'train/{role}/loss']:.4f}")
        for role in stage.eval_roles:
            parts.append(f"{role} val {metrics[f'val/{role}/acc']:.4f} "
                         f"test {metrics[f'test/{role}/acc']:.4f}")
        parts.append(f"labels {metrics['label/acc']:.4f}")
        parts.append(f"{metrics['time/epoch']:.1f}s")
        logger.info(" | ".join(parts))

    # -- checkpoints ------------------------------------------------------------------------

    def _save_checkpoint(self, stage: int, epoch: int, history_rows: int | None = None) -> None:
        run = self.run
        if history_rows is None:
            history_rows = self.history.rows()
        state = {
            "position": {"stage": stage, "epoch": epoch, "history_rows": history_rows,
                         "step": run.step},
            "models": {r: m.state_dict() for r, m in run.models.items()},
            "optimizers": {r: o.state_dict() for r, o in run.optimizers.items()},
            "components": {c.name: c.state_dict() for c in run.components},
            "plugins": {self.host.name_of(p): st for p, st in self._plugin_states()},
            "ledger": run.ledger.state_dict(),
            "rng": ckpt.rng_state(run.generator, self._order_gen, self._augment_gen),
            "best": copy.deepcopy(self._best),
            "best_states": self._best_states,
            "carried": self._carried,
            "summary": copy.deepcopy(self.summary),
        }
        self._saver.save(state, self.run_dir / ckpt.CHECKPOINT)
        self._checkpointed_at = time.monotonic()

    def _plugin_states(self) -> list[tuple[Any, dict[str, Any]]]:
        out = []
        for impl in self.host.hook.kdcore_checkpoint_state.get_hookimpls():
            st = impl.function(run=self.run)
            if st is not None:
                out.append((impl.plugin, st))
        return out

    def _restore(self, state: dict[str, Any]) -> None:
        run = self.run
        run.ledger.load_state_dict(state["ledger"])
        for comp in run.components:
            if comp.name in state["components"]:
                comp.load_state_dict(state["components"][comp.name])
        self.host.hook.kdcore_load_checkpoint_state(run=run, states=state["plugins"])
        ckpt.set_rng_state(state["rng"], run.generator, self._order_gen, self._augment_gen)


def prepare_run_dir(recipe: Recipe, out: str | None, *, resume: bool, overwrite: bool) -> Path:
    """Create (or check) the run directory; refuse to clobber an earlier run."""
    run_dir = Path(out) if out else Path(recipe.run.output_dir) / recipe.run.name
    history = run_dir / "history.h5"
    if resume:
        if not (run_dir / ckpt.CHECKPOINT).is_file():
            raise KdcoreError(f"nothing to resume: no checkpoint in {run_dir}")
        return run_dir
    if history.exists() and not overwrite:
        raise KdcoreError(
            f"{run_dir} already holds a run; use --resume to continue it, --overwrite to "
            f"replace it, or --out for a new directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise KdcoreError(f"cannot write to output directory {run_dir}: "
                          f"{exc.strerror or exc}") from None
    if overwrite:
        for name in ("history.h5", ckpt.CHECKPOINT, "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    return run_dir


def run_recipe(
    recipe: Recipe,
    *,
    out: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    host: PluginHost | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run a resolved recipe; the programmatic twin of ``kdcore run``.

    Returns:
        the summary (best-validation and last-epoch accuracies per model role).
    """
    host = host or PluginHost()
    run_dir = prepare_run_dir(recipe, out, resume=resume, overwrite=overwrite)
    (run_dir / "recipe.toml").write_text(recipe.to_toml()) if not resume else None
    trainer = Trainer(recipe, run_dir, host, resume=resume, progress=progress)
    trainer.prepare()
    sink = logger.add(run_dir / "log.txt", level="INFO")
    try:
        return trainer.fit()
    finally:
        logger.remove(sink)


__all__ = ["Run", "Trainer", "run_recipe"]
