"""Label-propagation components: the initial teacher LP, teacher-guided LP, and mutual LP.

One class, three registered names with different defaults (AML-KD §1.6 a-c). At the start of
each epoch (or once, at the start of the stage) it propagates seed labels over a model's feature
kNN graph and writes the refined labels, as one-hot rows, to the ledger's ``base_target``: what
every sample trains on from then on. Samples can keep their noisy label: those under a
confidence percentile, and those a selection (small-loss) marked as trusted.

A model whose features (or, where they make the seeds, logits) are NaN or infinite ends the run
with :class:`kdcore.TrainingDiverged` naming the component and the model role, checked once per
graph build; negative similarities are clamped at 0 before the affinity power
(:mod:`kdcore_lp.graph`).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

import kdcore
from kdcore.context import SCALAR_KINDS, ColumnKind, ColumnName, Role, RunContext, StartHook
from kdcore.losses import one_hot
from kdcore.validators import below_one, between, non_negative, positive
from kdcore_lp.graph import NonFiniteFeatures, check_finite, feature_graph
from kdcore_lp.propagation import propagate

_percentile = between(0.0, 100.0)


@attrs.frozen
class LPParams:
    """Parameters shared by ``initial_lp``, ``teacher_lp`` and ``mutual_lp``.

    Attributes:
        teacher: the role whose features build the graph (``graph = "teacher"``) and whose
            predictions seed the initial LP (checked by the plan where a setting uses it).
        student: the role of the student (its graph in ``mutual_lp``; its predictions make the
            selected labels; checked by the plan where a setting uses it).
        graph: ``teacher``, ``student``, or ``alternate`` (AML-KD's mutual LP: the student's
            graph when ``(e + offset) % 2 == 0``, the teacher's otherwise, where ``e`` is the
            student's absolute epoch, ``ctx.role_epoch(student)``: the epochs it trained in
            earlier stages plus this stage's epoch, counted from 0 like the release's epoch
            counter; in a stage that does not train the student, its earlier epochs plus this
            stage's epoch).
        offset: shifts the alternation by that many epochs (``alternate`` only). The default 0
            is the release's rule: student graph on even absolute epochs, teacher graph on odd
            ones (its stage 2 starts at epoch 181, so its first mutual epoch uses the teacher's
            graph); 1 swaps the two.
        seeds: ``teacher_prediction`` (teacher argmax), ``selected`` (the noisy label where the
            ``keep_selected`` mask is set, the student's argmax elsewhere), ``previous`` (argmax
            of the current ``base_target``) or ``noisy``.
        seed_weights: a ledger column of per-sample seed weights (e.g. ``awe/seed_weight``),
            there when the propagation runs, before the stage's first batch (written by an
            earlier stage, or at the start by a component placed earlier); empty: all 1.
        keep_selected: a ledger mask column (e.g. ``select/small_loss``), there when the
            propagation runs, as ``seed_weights``: those samples keep their noisy label, the
            others take the propagated one.
        keep_percentile: samples whose LP confidence is below this percentile keep their noisy
            label (5 in the initial LP, 0 later).
        when: ``stage_start`` (once) or ``epoch_start`` (every ``every`` epochs).
        k, gamma, alpha: kNN size, affinity power (> 0, applied to ``max(s, 0)``: negative
            similarities are clamped at 0, our reading), propagation strength; ``k`` must be
            below the number of training samples (refused at set-up, so by ``kdcore check``).
        normalize: L2-normalise features before the kNN search (AML-KD's defect D5 is
            ``false`` in its initial and stage-1 LP).
        clamp: zero negative scores before the read-out (the initial LP of the release skips it).
        cg_tol, cg_iters: conjugate-gradient tolerance and iteration cap.
        chunk: rows per block of the exact kNN search (0: as many as fit in a 64 MiB block).
        knn_backend: ``exact`` (chunked torch search, on the run's device), ``faiss`` (exact)
            or ``faiss_ivf`` (approximate: for hundreds of thousands of samples and more).
        ivf_nprobe: the inverted lists ``faiss_ivf`` scans per query.
    """

    teacher: Role = Role("teacher")
    student: Role = Role("student")
    graph: Literal["teacher", "student", "alternate"] = "teacher"
    offset: int = 0
    seeds: Literal["teacher_prediction", "selected", "previous", "noisy"] = "selected"
    seed_weights: ColumnName = ColumnName("")
    keep_selected: ColumnName = ColumnName("")
    keep_percentile: float = attrs.field(default=0.0, validator=_percentile)
    when: Literal["stage_start", "epoch_start"] = "epoch_start"
    every: int = attrs.field(default=1, validator=positive)
    k: int = attrs.field(default=20, validator=positive)
    gamma: float = attrs.field(default=3.0, validator=positive)
    alpha: float = attrs.field(default=0.99, validator=below_one)
    normalize: bool = True
    clamp: bool = True
    cg_tol: float = attrs.field(default=1e-6, validator=positive)
    cg_iters: int = attrs.field(default=20, validator=positive)
    chunk: int = attrs.field(default=0, validator=non_negative)
    knn_backend: Literal["exact", "faiss", "faiss_ivf"] = "exact"
    ivf_nprobe: int = attrs.field(default=16, validator=positive)


@attrs.frozen
class InitialLPParams(LPParams):
    """``initial_lp`` (AML-KD §1.6a): teacher predictions as seeds, once, 5th percentile."""

    seeds: Literal["teacher_prediction", "selected", "previous", "noisy"] = "teacher_prediction"
    keep_percentile: float = attrs.field(default=5.0, validator=_percentile)
    when: Literal["stage_start", "epoch_start"] = "stage_start"
    clamp: bool = False


@attrs.frozen
class MutualLPParams(LPParams):
    """``mutual_lp`` (AML-KD §1.6c): previous labels as seeds, graphs alternating by the
    student's absolute epoch (the release's parity: teacher's graph on odd epochs)."""

    graph: Literal["teacher", "student", "alternate"] = "alternate"
    seeds: Literal["teacher_prediction", "selected", "previous", "noisy"] = "previous"


class LabelPropagation(kdcore.Component):
    """Refine ``base_target`` by label propagation over a feature kNN graph.

    Reads ``seed_weights`` and ``keep_selected`` (parameters); writes ``base_target`` and
    ``lp/<name>/label`` (the propagated label), ``lp/<name>/confidence`` and
    ``lp/<name>/refined`` (the label after the keep rules: what ``base_target`` holds, one-hot),
    besides its ``refine`` hook's ``target``.
    """

    Params = LPParams
    description = "label propagation over a model's feature kNN graph"
    writes = ("base_target", "lp/{name}/label", "lp/{name}/confidence", "lp/{name}/refined")
    column_kinds = {"base_target": "target", "lp/{name}/label": "label",
                    "lp/{name}/confidence": "value", "lp/{name}/refined": "label"}

    def roles(self) -> tuple[str, ...]:
        """The graph's model(s), the teacher when it seeds, the student when its predictions
        make the selected labels."""
        p = self.params
        used: list[str] = []
        if p.graph in ("teacher", "alternate"):
            used.append(p.teacher)
        if p.graph in ("student", "alternate"):
            used.append(p.student)
        if p.seeds == "teacher_prediction":
            used.append(p.teacher)
        if p.seeds == "selected":
            used.append(p.student)
        return tuple(dict.fromkeys(used))

    def reads_at_start(self) -> dict[str, StartHook]:
        """Its columns are read by the propagation, before the stage's first batch."""
        return dict.fromkeys(self.reads(), self._start_hook())

    def writes_at_start(self) -> dict[str, StartHook]:
        """The propagation writes its columns before the stage's first batch."""
        return dict.fromkeys((w.format(name=self.name) for w in self.writes), self._start_hook())

    def _start_hook(self) -> StartHook:
        return "on_stage_start" if self.params.when == "stage_start" else "on_epoch_start"

    def read_kinds(self) -> dict[str, ColumnKind | tuple[ColumnKind, ...]]:
        """``keep_selected`` is a mask (a weight would be read as "kept" wherever it is not
        0); ``seed_weights`` holds one number per sample (not a label or a target)."""
        p = self.params
        out: dict[str, ColumnKind | tuple[ColumnKind, ...]] = {}
        if p.seed_weights:
            out[p.seed_weights] = SCALAR_KINDS
        if p.keep_selected:
            out[p.keep_selected] = "mask"
        return out

    def setup(self, ctx: RunContext) -> None:
        # the graph links each training sample to k others: refused here, so that `kdcore
        # check` says so, not the first propagation after a whole teacher stage
        k, n = self.params.k, ctx.ledger.size
        if k >= n:
            # the recipe's other LP entries that need as many: named at once, not one per rerun
            others = [f"'{label}' (k = {other})" for label, other in dict(
                _entries_k(ctx.recipe)).items() if other >= n and label != self.name]
            also = ""
            if others:
                listed = (others[0] if len(others) == 1 else
                          f"{', '.join(others[:-1])} and {others[-1]}")
                also = f", as {'does' if len(others) == 1 else 'do'} {listed}"
            raise kdcore.RecipeError(
                f"component '{self.name}': k = {k} neighbours needs more than {k} training "
                f"samples{also}; the run has {n} (lower params.k{' of each' * bool(others)}, "
                "or train on more samples)")

    def on_stage_start(self, ctx: RunContext) -> None:
        if self.params.when == "stage_start":
            self.propagate_now(ctx)

    def on_epoch_start(self, ctx: RunContext) -> None:
        if self.params.when == "epoch_start" and ctx.epoch % self.params.every == 0:
            self.propagate_now(ctx)

    def refine(self, ctx: RunContext, batch: kdcore.Batch, targets: torch.Tensor
               ) -> torch.Tensor:
        # the work happens per epoch, in base_target; the batch's targets already carry it
        return targets

    # -- the propagation --------------------------------------------------------------------

    def absolute_epoch(self, ctx: RunContext) -> int:
        """The student's epoch over all its training (the release's epoch counter):
        ``ctx.role_epoch(student)``, plus this stage's epoch where the stage does not train it."""
        student = self.params.student
        return ctx.role_epoch(student) + (0 if ctx.trains(student) else ctx.epoch)

    def graph_role(self, ctx: RunContext) -> str:
        """The role whose graph this epoch's propagation uses (see ``LPParams.graph``)."""
        p = self.params
        if p.graph == "alternate":
            even = (self.absolute_epoch(ctx) + p.offset) % 2 == 0
            return p.student if even else p.teacher
        return p.teacher if p.graph == "teacher" else p.student

    def _diverged(self, ctx: RunContext, what: str, role: str, err: NonFiniteFeatures
                  ) -> kdcore.TrainingDiverged:
        return kdcore.TrainingDiverged(
            f"component '{self.name}' ({self.spec.use}): {what} of model '{role}' are not "
            f"finite ({err.bad} of {err.total} samples) at stage '{ctx.stage.name}' epoch "
            f"{ctx.epoch}; the model diverged or its inputs hold NaN, and label propagation "
            f"cannot use them")

    def _logits(self, ctx: RunContext, role: str) -> torch.Tensor:
        """``role``'s full-set logits, refused when not finite (their argmax makes seeds)."""
        logits = ctx.features(role).logits
        try:
            check_finite(logits)
        except NonFiniteFeatures as err:
            raise self._diverged(ctx, "logits", role, err) from None
        return logits

    def _graph(self, ctx: RunContext, role: str) -> torch.Tensor:
        """The normalised affinity of ``role``'s features, shared through ``ctx.cache`` while
        the model is unchanged: a frozen teacher's graph is built once for the whole run, by
        whichever LP component needs it first."""
        p = self.params
        key = ("kdcore_lp/graph", role, ctx.model_version(role), p.k, p.gamma, p.normalize,
               p.knn_backend, p.ivf_nprobe)
        cache = ctx.cache
        if key not in cache:
            for old in [k for k in cache if k[:2] == key[:2]]:  # older versions of this model
                del cache[old]
            feats = ctx.features(role).features
            try:  # feature_graph checks that the features are finite, once per build
                cache[key] = feature_graph(feats, k=p.k, gamma=p.gamma, normalize=p.normalize,
                                           chunk=p.chunk, backend=p.knn_backend,
                                           nprobe=p.ivf_nprobe)
            except NonFiniteFeatures as err:
                raise self._diverged(ctx, "features", role, err) from None
        return cache[key]

    def seed_labels(self, ctx: RunContext) -> torch.Tensor:
        p = self.params
        led = ctx.ledger
        if p.seeds == "teacher_prediction":
            return self._logits(ctx, p.teacher).argmax(1)
        if p.seeds == "previous":
            return led["base_target"].argmax(1)
        if p.seeds == "noisy":
            return led["noisy_label"]
        return self.selected_labels(ctx)

    def selected_labels(self, ctx: RunContext) -> torch.Tensor:
        """AML-KD's ``y_sel``: the noisy label where selected, the student's argmax elsewhere."""
        p = self.params
        pred = self._logits(ctx, p.student).argmax(1)
        if not p.keep_selected:
            return pred
        mask = self._column(ctx, p.keep_selected).bool()
        return torch.where(mask, ctx.ledger["noisy_label"], pred)

    def _column(self, ctx: RunContext, name: str) -> torch.Tensor:
        # the plan checked that the column is written before the stage's first batch
        # (reads_at_start); a third-party writer may not have declared when it writes
        try:
            return ctx.ledger[name]
        except KeyError as exc:
            raise kdcore.KdcoreError(
                f"component '{self.name}' reads ledger column '{name}' before the stage's "
                "first batch, where its writer declares it written (Component.writes_at_start "
                f"and written_columns), but {exc.args[0]}") from None

    def propagate_now(self, ctx: RunContext) -> None:
        p = self.params
        led = ctx.ledger
        role = self.graph_role(ctx)
        seeds = self.seed_labels(ctx)
        weights = self._column(ctx, p.seed_weights).float() if p.seed_weights else None
        result = propagate(self._graph(ctx, role), seeds, ctx.num_classes, weights,
                           alpha=p.alpha, clamp=p.clamp, tol=p.cg_tol, maxiter=p.cg_iters)
        noisy = led["noisy_label"]
        keep = torch.zeros_like(noisy, dtype=torch.bool)
        if p.keep_percentile > 0:
            threshold = torch.quantile(result.confidence.double(), p.keep_percentile / 100.0)
            keep |= result.confidence.double() < threshold
        if p.keep_selected:
            keep |= self._column(ctx, p.keep_selected).bool()
        labels = torch.where(keep, noisy, result.labels)
        led.add("base_target", one_hot(labels, ctx.num_classes), kind="target", snapshot=False)
        led.add(f"lp/{self.name}/label", result.labels, kind="label")
        led.add(f"lp/{self.name}/confidence", result.confidence)
        led.add(f"lp/{self.name}/refined", labels, kind="label")
        clean = led["clean_label"]
        ctx.log_metric(f"lp/{self.name}/acc", float((result.labels == clean).double().mean()))
        ctx.log_metric(f"lp/{self.name}/refined_acc", float((labels == clean).double().mean()))
        ctx.log_metric(f"lp/{self.name}/changed", float((labels != noisy).double().mean()))
        ctx.log_metric(f"lp/{self.name}/graph_is_teacher", float(role == p.teacher))


class InitialLP(LabelPropagation):
    """AML-KD's initial LP: relabel by the propagated teacher predictions, once."""

    Params = InitialLPParams
    description = "initial teacher LP (teacher predictions as seeds, once per stage)"


class TeacherLP(LabelPropagation):
    """AML-KD's stage-1 LP: selected labels propagated over the teacher's graph."""

    description = "teacher-guided LP of the selected labels, every epoch"


class MutualLP(LabelPropagation):
    """AML-KD's stage-2 mutual LP: previous labels over the student's and teacher's graphs."""

    Params = MutualLPParams
    description = "mutual LP alternating the student's and the teacher's graphs"


COMPONENTS: dict[str, type[LabelPropagation]] = {
    "initial_lp": InitialLP, "teacher_lp": TeacherLP, "mutual_lp": MutualLP}
"""The registered names of the LP components."""


def _entries_k(recipe: kdcore.Recipe) -> list[tuple[str, int]]:
    """Each enabled LP entry of ``recipe`` by its label, with its ``k`` (its class's default
    where the entry gives none; the plan has checked every entry's parameters by then)."""
    found = []
    for stage in recipe.stages:
        for comp in stage.components:
            if comp.enabled and comp.use in COMPONENTS:
                k = comp.params.get("k", attrs.fields(COMPONENTS[comp.use].Params).k.default)
                found.append((comp.label, k))
    return found
