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

from typing import Literal

import attrs
import torch
import torch.nn.functional as F

import kdcore
from kdcore.validators import positive, unit_interval
from kdcore_mlc.losses import LabelsAtBackward, kdmlc_student_loss
from kdcore_mlc.mlc import MLC


@attrs.frozen
class KDMLCStudentParams:
    """Parameters of ``kdmlc_student`` (all reconstructions, spec section 3.2).

    Attributes:
        teacher: the teacher's model role (whose logits are distilled).
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

    teacher: str = "teacher"
    corrector: str | None = None
    beta: float = attrs.field(default=0.5, validator=unit_interval)
    temperature: float = attrs.field(default=4.0, validator=positive)
    soft_target: Literal["teacher", "lcn"] = "teacher"
    clean_half: bool = False
    labels_after_meta_step: bool = True


class KDMLCStudent(kdcore.Component):
    """KDMLC's student loss: corrected labels from an MLC teacher plus its distilled logits."""

    Params = KDMLCStudentParams
    description = "KDMLC student: (1-beta) CE on MLC-corrected labels + beta T^2 KL to the teacher"

    def setup(self, run: kdcore.Run) -> None:
        p = self.params
        mlcs = [c for c in run.components if isinstance(c, MLC)]
        if p.corrector is not None:
            mlcs = [c for c in mlcs if c.name == p.corrector]
        if len(mlcs) != 1:
            which = f"an mlc component labelled '{p.corrector}'" if p.corrector else (
                "exactly one mlc component (or set params.corrector)")
            raise kdcore.RecipeError(f"component '{self.name}' needs {which} in stage "
                                     f"'{run.stage.name}'")
        self.corrector: MLC = mlcs[0]
        if p.teacher not in run.models:
            raise kdcore.RecipeError(f"component '{self.name}': teacher role '{p.teacher}' is "
                                     f"not defined in [models]")
        if p.clean_half and self.corrector.params.method != "hmlc_K_mix":
            raise kdcore.RecipeError(f"component '{self.name}': clean_half needs the gold batch's "
                                     f"clean half (method = \"hmlc_K_mix\" on "
                                     f"'{self.corrector.name}')")
        for role in self.models:
            if role == self.corrector.model:
                raise kdcore.RecipeError(f"component '{self.name}' serves '{role}', the main "
                                         f"model of '{self.corrector.name}'; it is for a student")

    def _loss_fn(self, teacher_logits: torch.Tensor | None):
        beta, t = self.params.beta, self.params.temperature

        def fn(student_logits: torch.Tensor, corrected: torch.Tensor) -> torch.Tensor:
            return kdmlc_student_loss(student_logits, corrected, teacher_logits, beta, t)

        return fn

    def transfer(self, batch: kdcore.Batch) -> dict[str, torch.Tensor]:
        p = self.params
        corrector = self.corrector
        corrected = corrector.corrected(batch)
        teacher_logits = (batch.out(p.teacher).logits.detach()
                          if p.soft_target == "teacher" else None)
        fn = self._loss_fn(teacher_logits)
        gold = corrector.gold_batch(batch) if p.clean_half else None
        out: dict[str, torch.Tensor] = {}
        for role in self.models:
            logits = batch.out(role).logits
            if p.labels_after_meta_step:
                per_sample = LabelsAtBackward.apply(
                    logits, fn, corrected, lambda: corrector.corrected_after_meta_step(batch))
            else:
                per_sample = fn(logits, corrected)
            if gold is not None and gold.clean_x is not None and len(gold.clean_y):
                clean = F.cross_entropy(batch.forward(role, gold.clean_x).logits, gold.clean_y)
                n_s, n_c = len(per_sample), len(gold.clean_y)
                per_sample = (n_s * per_sample + n_c * clean) / (n_s + n_c)
            out[role] = per_sample
        return out


__all__ = ["KDMLCStudent", "KDMLCStudentParams"]
