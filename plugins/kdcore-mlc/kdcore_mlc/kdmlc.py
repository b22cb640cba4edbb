"""KDMLC's student term: an MLC teacher guiding a lightweight student online.

The paper's student loss could not be read (see spec section 3); this is the reconstruction of
section 3.2, with every undecided choice a parameter:

``(1 - beta) sce(z_S, y^c) + beta T^2 KL(softmax(z_T / T) || softmax(z_S / T))``

per noisy sample, where ``y^c`` is the corrected label of the MLC component (the teacher's
LCN on the teacher's detached features and the noisy label) and ``z_T`` the teacher's logits,
both detached. With ``clean_half`` the student also learns from the gold batch's clean half C
(weighted by batch sizes as MLC weights its own loss). With ``labels_after_meta_step`` (the
default) the student's gradient uses ``y^c`` from the LCN *after* this iteration's meta update
(the freshest LCN), computed when the student's backward pass runs: the engine runs a role's own
backward after the backward passes that components took over, and MLC's meta update happens in
the teacher's. The teacher's weights are those before this iteration's real step in both cases.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
import torch.nn.functional as F

import kdcore
from kdcore import Role
from kdcore.validators import softmax_temperature, unit_interval
from kdcore_mlc.losses import LabelsAtBackward, kdmlc_student_loss


@attrs.frozen
class KDMLCStudentParams:
    """Parameters of ``kdmlc_student`` (all reconstructions, spec section 3.2).

    Attributes:
        teacher: the teacher's model role (whose logits are distilled; used with
            ``soft_target = "teacher"`` only).
        corrector: the label of the ``mlc`` component whose corrected labels the student
            learns from (default: the only ``mlc`` component of the stage).
        beta: the weight of the KD term; ``1 - beta`` weighs the corrected-label term.
        temperature: T of the KD term.
        soft_target: ``teacher``: the teacher network's softened logits; ``lcn``: the
            corrected label tempered by T (``softmax(log y^c / T)``).
        clean_half: also train the student on the clean half C of MLC's gold batch
            (needs ``method = "hmlc_K_mix"`` on the corrector).
        labels_after_meta_step: learn from ``y^c`` of the LCN after this iteration's meta
            update (true) or before it (false: the labels in the ledger).
    """

    teacher: Role = Role("teacher")
    corrector: str | None = None
    beta: float = attrs.field(default=0.5, validator=unit_interval)
    temperature: float = attrs.field(default=4.0, validator=softmax_temperature)
    soft_target: Literal["teacher", "lcn"] = "teacher"
    clean_half: bool = False
    labels_after_meta_step: bool = True


def find_corrector(stage: Any, corrector: str | None) -> Any:
    """The enabled ``mlc`` entry of ``stage`` a student takes its labels from, or why none.

    Args:
        stage: the student's stage config (``ctx.stage``, or an entry of ``recipe.stages``).
        corrector: the student's ``corrector`` parameter (None: the stage's only ``mlc``).

    Returns:
        the entry (a ``[[stages.components]]`` config), or a message (a ``str``) ending
        ``... in stage '<name>'``.
    """
    mlcs = [c for c in stage.components if c.enabled and c.use == "mlc"]
    if corrector is not None:
        mlcs = [c for c in mlcs if c.label == corrector]
    if len(mlcs) == 1:
        return mlcs[0]
    which = (f"an mlc component labelled '{corrector}'" if corrector is not None
             else "exactly one mlc component (or set params.corrector)")
    return f"needs {which} in stage '{stage.name}'"


class KDMLCStudent(kdcore.Component):
    """KDMLC's student loss: corrected labels from an MLC teacher plus its distilled logits.

    It reads what the ``mlc`` component (its corrector) leaves in ``batch.store`` under its
    label: ``yc``, ``labels_after_meta_step`` and, with ``clean_half``, ``gold``. The recipe
    checks (a corrector in the stage, the student not its main model, ``clean_half`` with
    ``hmlc_K_mix``) are the plugin's ``kdcore_configure``.
    """

    Params = KDMLCStudentParams
    learns_from = ("teacher",)
    description = "KDMLC student: (1-beta) CE on MLC-corrected labels + beta T^2 KL to the teacher"

    def roles(self) -> tuple[str, ...]:
        # with soft_target = "lcn" the teacher network is never run
        return super().roles() if self.params.soft_target == "teacher" else ()

    def setup(self, ctx: kdcore.RunContext) -> None:
        corrector = self.params.corrector
        if corrector is None:
            found = find_corrector(ctx.stage, None)
            if isinstance(found, str):
                raise kdcore.RecipeError(f"component '{self.name}' {found}")
            corrector = found.label
        self.corrector: str = corrector  # the label its batch values are stored under

    def _loss_fn(self, teacher_logits: torch.Tensor | None):
        beta, t = self.params.beta, self.params.temperature

        def fn(student_logits: torch.Tensor, corrected: torch.Tensor) -> torch.Tensor:
            return kdmlc_student_loss(student_logits, corrected, teacher_logits, beta, t)

        return fn

    def transfer(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> dict[str, torch.Tensor]:
        p = self.params
        store, src = batch.store, self.corrector
        corrected = store.require(src, "yc").detach()
        teacher_logits = (batch.out(p.teacher).logits.detach()
                          if p.soft_target == "teacher" else None)
        fn = self._loss_fn(teacher_logits)
        gold = store.require(src, "gold") if p.clean_half else None
        later = store.require(src, "labels_after_meta_step") if p.labels_after_meta_step else None
        out: dict[str, torch.Tensor] = {}
        for role in self.models:
            logits = batch.out(role).logits
            if later is not None:
                per_sample = LabelsAtBackward.apply(logits, fn, corrected, later)
            else:
                per_sample = fn(logits, corrected)
            if gold is not None and gold.clean_x is not None and len(gold.clean_y):
                clean = F.cross_entropy(batch.forward(role, gold.clean_x).logits, gold.clean_y)
                n_s, n_c = len(per_sample), len(gold.clean_y)
                per_sample = (n_s * per_sample + n_c * clean) / (n_s + n_c)
            out[role] = per_sample
        return out


__all__ = ["KDMLCStudent", "KDMLCStudentParams", "find_corrector"]
