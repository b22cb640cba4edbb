"""Evaluation of the models each epoch, and best-validation keeping."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from kdcore.ledger import Ledger
from kdcore.metrics import accuracy, balanced_accuracy, selection_quality
from kdcore.recipe import StageConfig
from kdcore.rundata import RunData


@torch.no_grad()
def evaluate(models: Mapping[str, torch.nn.Module], roles: list[str], data: RunData,
             batch_size: int) -> dict[str, float]:
    """Validation accuracy against the noisy and the true labels, test accuracy and balanced
    accuracy of each role in ``roles``, in eval mode (each model's mode is restored)."""
    out: dict[str, float] = {}
    for role in roles:
        model = models[role]
        was = model.training
        model.eval()
        preds = {}
        for split in ("val", "test"):
            ds = data.split(split)
            p = [model(data.inputs(ds, i))[0].argmax(1) for i in data.batches(ds, batch_size)]
            preds[split] = torch.cat(p) if p else torch.empty(0, dtype=torch.long)
        model.train(was)
        out[f"val/{role}/acc"] = accuracy(preds["val"], data.val_noisy)
        out[f"val/{role}/acc_clean"] = accuracy(preds["val"], data.val.y)
        out[f"test/{role}/acc"] = accuracy(preds["test"], data.test.y)
        out[f"test/{role}/bacc"] = balanced_accuracy(preds["test"], data.test.y,
                                                     data.num_classes)
    return out


def ledger_metrics(ledger: Ledger) -> dict[str, float]:
    """Refined-label accuracy and every selection's quality against the true labels."""
    clean = ledger["clean_mask"]
    out = {
        "label/acc": accuracy(ledger["target"].argmax(1), ledger["clean_label"]),
        "label/noisy_acc": float(clean.double().mean()),
    }
    for name, column in ledger.items():
        if name.startswith("select/") and column.kind == "mask":
            for k, v in selection_quality(column.data, clean).items():
                out[f"{name}/{k}"] = v
    return out


class BestKeeper:
    """Tracks each trained role's best-validation epoch per stage, and its weights when the
    stage keeps them (``keep = "best_val"``). Its state goes into every checkpoint."""

    def __init__(self) -> None:
        self.best: dict[str, dict[str, Any]] = {}
        self.states: dict[str, dict[str, torch.Tensor]] = {}

    def forget_stage(self, s: int) -> None:
        self.best = {k: v for k, v in self.best.items() if not k.startswith(f"{s}/")}

    def update(self, s: int, stage: StageConfig, role: str, epoch: int,
               metrics: Mapping[str, float], model: torch.nn.Module) -> None:
        key = f"{s}/{role}"
        val = metrics[f"val/{role}/acc"]
        best = self.best.get(key)
        if best is None or val > best["val_acc"]:
            self.best[key] = {"epoch": epoch, "val_acc": val,
                              "test_acc": metrics[f"test/{role}/acc"],
                              "test_bacc": metrics[f"test/{role}/bacc"]}
            if stage.keep == "best_val":
                self.states[key] = {k: v.detach().clone()
                                    for k, v in model.state_dict().items()}
        self.best[key]["last_test_acc"] = metrics[f"test/{role}/acc"]
        self.best[key]["last_test_bacc"] = metrics[f"test/{role}/bacc"]
        self.best[key]["last_val_acc"] = val

    def kept_state(self, s: int, role: str) -> tuple[int, dict[str, torch.Tensor]] | None:
        key = f"{s}/{role}"
        state = self.states.get(key)
        return None if state is None else (self.best[key]["epoch"], state)

    def summary(self, s: int, stage: StageConfig, role: str) -> dict[str, Any] | None:
        best = self.best.get(f"{s}/{role}")
        if best is None:
            return None
        return {"stage": stage.name, "best_val_epoch": best["epoch"],
                "val_acc": best["val_acc"], "test_acc_at_best_val": best["test_acc"],
                "test_bacc_at_best_val": best["test_bacc"],
                "last_test_acc": best["last_test_acc"],
                "last_test_bacc": best["last_test_bacc"], "kept": stage.keep}

    def state_dict(self) -> dict[str, Any]:
        return {"best": copy.deepcopy(self.best), "states": self.states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = dict(state["best"])
        self.states = dict(state["states"])
