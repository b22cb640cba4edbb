"""Evaluation of the models each epoch, and best-validation keeping."""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from loguru import logger

from kdcore.checkpoint import snapshot
from kdcore.history_names import folder_clash, name_problem
from kdcore.ledger import Ledger
from kdcore.metrics import accuracy, balanced_accuracy, roc_auc, selection_quality
from kdcore.recipe import StageConfig
from kdcore.rundata import RunData

NO_PREDICTION = -1
"""The predicted class of a sample whose logits hold NaN: none, so it counts as wrong (argmax
had taken the NaN's index, class 0 for a model whose logits were all NaN: a model that had
broken down scored the share of class 0 as its accuracy)."""


@torch.no_grad()
def evaluate(models: Mapping[str, torch.nn.Module], roles: list[str], data: RunData,
             batch_size: int,
             predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
             confusions: dict[str, torch.Tensor] | None = None,
             warned: set[str] | None = None) -> dict[str, float]:
    """Validation accuracy against the noisy and the true labels, test accuracy and balanced
    accuracy of each role in ``roles``, in eval mode (each model's mode is restored).

    ``predict(model, x)`` gives the logits (default ``model(x)[0]``; a run passes its own,
    which keeps its precision and divides the rows among a distributed run's ranks). With
    ``confusions``, each role's test confusion matrix (:func:`confusion`) is put there. A
    sample whose logits hold NaN has no prediction (:data:`NO_PREDICTION`): a warning says how
    many, once per role in ``warned`` (each time without it)."""
    out: dict[str, float] = {}
    for role in roles:
        preds = predictions(models[role], data, ("val", "test"), batch_size, predict)
        if warned is None or role not in warned:
            _warn_unpredicted(role, preds, warned, models[role])
        if confusions is not None:
            confusions[role] = confusion(data.test.y, preds["test"], data.num_classes)
        out[f"val/{role}/acc"] = accuracy(preds["val"], data.val_noisy)
        out[f"val/{role}/acc_clean"] = accuracy(preds["val"], data.val.y)
        out[f"test/{role}/acc"] = accuracy(preds["test"], data.test.y)
        out[f"test/{role}/bacc"] = balanced_accuracy(preds["test"], data.test.y,
                                                     data.num_classes)
    return out


@torch.no_grad()
def predictions(model: torch.nn.Module, data: RunData, splits: tuple[str, ...], batch_size: int,
                predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
    """``model``'s predicted class of every sample of each of ``splits``, in eval mode (its
    mode is restored); ``predict`` as :func:`evaluate` takes it."""
    was = model.training
    model.eval()
    out = {}
    for split in splits:
        ds = data.split(split)
        p = [_predicted(model(x)[0] if predict is None else predict(model, x))
             for _, x in data.stream(ds, list(data.batches(ds, batch_size)))]
        out[split] = torch.cat(p) if p else torch.empty(0, dtype=torch.long)
    model.train(was)
    return out


_SPLIT_NAMES = {"val": "validation"}


def _predicted(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1).masked_fill_(torch.isnan(logits).any(1), NO_PREDICTION)


def _warn_unpredicted(role: str, preds: Mapping[str, torch.Tensor], warned: set[str] | None,
                      model: torch.nn.Module) -> None:
    missing = {split: int((p == NO_PREDICTION).sum()) for split, p in preds.items()}
    if not any(missing.values()):
        return
    counts = " and ".join(f"{missing[s]} of {len(preds[s])} {_SPLIT_NAMES.get(s, s)}"
                          for s in preds)
    logger.warning(f"model '{role}' gave NaN logits for {counts} samples, which count as wrong "
                   f"predictions: {_why_not_finite(model)}"
                   + (" (said once)" if warned is not None else ""))
    if warned is not None:
        warned.add(role)


def _why_not_finite(model: torch.nn.Module) -> str:
    """What a model whose evaluation gave NaN holds: the tensors of its state that are not
    finite, or, where all are, that its activations overflowed (a MNASNet on 8x8 images, its
    weights finite and its training loss too, overflowed float32 at its BatchNorm running
    statistics, which evaluation normalises with in place of each batch's own)."""
    bad = [name for name, t in model.state_dict().items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.isfinite().all()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return f"its weights or BatchNorm statistics hold NaN or inf ({', '.join(bad[:3])}{more})"
    return ("its weights and BatchNorm statistics are all finite, so its activations overflowed "
            "float32 or turned NaN in evaluation (which normalises with BatchNorm's running "
            "statistics where training uses each batch's own; statistics far from the "
            "batches' can overflow: a lower learning rate, or an architecture made for inputs "
            "of this size)")


def confusion(truth: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The confusion matrix (``int64``, ``C x C``, on the CPU): row the true class, column the
    predicted one; a sample without a prediction (:data:`NO_PREDICTION`) is in no column. A
    stage records its test split's for each model it trains and evaluates, with the weights it
    keeps (``/data/test_confusion/<stage>/<role>``)."""
    c = num_classes
    truth, kept = truth.to(pred.device), pred != NO_PREDICTION
    return torch.bincount(truth[kept] * c + pred[kept], minlength=c * c).view(c, c).cpu()


def confusion_on_test(model: torch.nn.Module, data: RunData, batch_size: int,
                      predict: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None
                      ) -> torch.Tensor:
    """:func:`confusion` of ``model`` on the test split, predicted now (a stage whose kept
    epoch's matrix is not at hand: a checkpoint of an older kdcore)."""
    pred = predictions(model, data, ("test",), batch_size, predict)["test"]
    return confusion(data.test.y, pred, data.num_classes)


def ledger_metrics(ledger: Ledger, skip: Collection[str] = ()) -> dict[str, float]:
    """Refined-label accuracy, every selection's quality against the true labels, and every
    weighting's ROC AUC for telling right training labels (the refined target's largest value
    is at the true class, and there alone: a uniform row names no label, where argmax had named
    class 0) from wrong ones (``weight/<name>/auc``); none of the columns in ``skip`` (masks and
    weights no hook wrote this epoch: a selector that abstained, one of an earlier stage)."""
    clean = ledger["clean_mask"]
    target = ledger["target"]
    top = target.max(1)  # one pass for the largest values and their (first) classes
    right = (top.indices == ledger["clean_label"]) & ((target == top.values[:, None]).sum(1) == 1)
    out = {
        "label/acc": float(right.double().mean()) if right.numel() else float("nan"),
        "label/noisy_acc": float(clean.double().mean()),
    }
    for name, column in ledger.items():
        if name in skip:
            continue
        if name.startswith("select/") and column.kind == "mask":
            for k, v in selection_quality(column.data, clean).items():
                out[f"{name}/{k}"] = v
        elif name.startswith("weight/") and column.kind == "weight" and column.data.dim() == 1:
            out[f"{name}/auc"] = roc_auc(column.data, right)
    return out


class EpochMetrics(dict):
    """An epoch's metrics as ``on_epoch_end`` gets them: a component adds numbers under new
    names (``metrics["x/y"] = value``); one that would replace or remove a metric already
    there (the engine's ``label/acc``, say), store a value that is not one number, or use a
    name the history cannot hold (not a string, an empty part, a name that is another's
    folder: ``a`` beside ``a/b``) is refused in one line, not with h5py's words at the write."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._logged: set[str] = set()  # names taken from ctx.log_metric: logged again, replaced
        self._folders: set[str] = set()  # every folder of a name held ("a" and "a/b" of "a/b/c")
        self.update(*args, **kwargs)

    def __setitem__(self, name: str, value: Any) -> None:
        if name in self:
            raise _refused(f"metric '{name}' is already this epoch's; a component adds its own "
                           "under a new name, it does not replace one")
        problem = name_problem(name)
        if problem:
            raise _refused(f"metric name {problem}")
        parts = name.split("/")
        folders = ["/".join(parts[:k]) for k in range(1, len(parts))]
        # the history keeps "a/b" as b in a folder a; a set lookup per folder, not a scan
        if name in self._folders or any(f in self for f in folders):
            raise _refused(f"metrics '{folder_clash(name, self)}' and '{name}' cannot both be "
                           "written: the history keeps a name with '/' as a folder of metrics")
        super().__setitem__(name, _number(name, value))
        self._folders.update(folders)

    def update(self, *args: Any, **kwargs: Any) -> None:  # dict's own bypasses __setitem__
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def take_logged(self, logged: dict[str, float]) -> None:
        """Add, and empty, what ``ctx.log_metric`` collected since the last call: a name logged
        before may be logged again (the last value wins); a metric of the engine's may not."""
        for name, value in logged.items():
            if name in self._logged:
                super().__setitem__(name, _number(name, value))
            else:
                self[name] = value
                self._logged.add(name)
        logged.clear()

    def _removes(self, *args: Any) -> Any:
        raise _refused("a component adds metrics; it does not remove one (the history row "
                       "and the best-epoch keeping read them)")

    __delitem__ = pop = popitem = clear = _removes  # type: ignore[assignment]


def _refused(message: str) -> Exception:
    from kdcore.failures import RunFailed

    return RunFailed(message)


def _number(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise _refused(f"metric '{name}' is a tensor of shape {tuple(value.shape)}; a metric "
                       "is one number")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise _refused(f"metric '{name}' is {type(value).__name__} {value!r:.60}; a metric is "
                       "one number") from None


class BestKeeper:
    """Tracks each trained role's best-validation epoch per stage (key ``"<stage>/<role>"``)
    and over all of its stages so far (key ``"*/<role>"``), with the weights where a stage
    keeps them: ``keep = "best_val"`` this stage's best, ``"best_val_all"`` the role's best
    over every stage (stored from the role's first stage on, for the roles ``keep_all``
    names). Its state goes into every checkpoint.

    Args:
        keep_all: the roles some stage keeps with ``best_val_all``.
    """

    def __init__(self, keep_all: frozenset[str] = frozenset()) -> None:
        self.keep_all = keep_all
        self.best: dict[str, dict[str, Any]] = {}
        self.states: dict[str, dict[str, torch.Tensor]] = {}

    def update(self, s: int, stage: StageConfig, role: str, epoch: int,
               metrics: Mapping[str, float], model: torch.nn.Module,
               test_confusion: torch.Tensor | None = None) -> None:
        val = metrics[f"val/{role}/acc"]
        record = {"epoch": epoch, "stage": stage.name, "val_acc": val,
                  "test_acc": metrics[f"test/{role}/acc"],
                  "test_bacc": metrics[f"test/{role}/bacc"], "test_confusion": test_confusion}
        for key, keeps in ((f"{s}/{role}", stage.keep == "best_val"),
                           (f"*/{role}", role in self.keep_all)):
            best = self.best.get(key)
            if best is None or val > best["val_acc"]:
                self.best[key] = dict(record)
                if keeps:
                    self.states[key] = snapshot(model.state_dict())
            self.best[key]["last_test_acc"] = metrics[f"test/{role}/acc"]
            self.best[key]["last_test_bacc"] = metrics[f"test/{role}/bacc"]
            self.best[key]["last_test_confusion"] = test_confusion

    def kept_confusion(self, s: int, stage: StageConfig, role: str) -> torch.Tensor | None:
        """The test confusion matrix of the weights stage ``s`` keeps for ``role`` (its best
        or its last epoch's), or None where the record has none."""
        key = f"*/{role}" if stage.keep == "best_val_all" else f"{s}/{role}"
        field = "last_test_confusion" if stage.keep == "last" else "test_confusion"
        return self.best.get(key, {}).get(field)

    def kept_state(self, s: int, stage: StageConfig, role: str
                   ) -> tuple[str, int, dict[str, torch.Tensor]] | None:
        """``(stage name, epoch, weights)`` to restore at the end of stage ``s``, or None."""
        key = {"best_val": f"{s}/{role}", "best_val_all": f"*/{role}"}.get(stage.keep)
        state = self.states.get(key) if key else None
        if state is None:
            return None
        return self.best[key]["stage"], self.best[key]["epoch"], state

    def release(self, s: int) -> None:
        """Drop the weights stage ``s`` kept for its end (restored by then): no later stage
        reads them, and each was a whole copy of a model, held to the run's end in memory and
        in every checkpoint. A role's best over all stages (``best_val_all``) stays."""
        for key in [k for k in self.states if k.startswith(f"{s}/")]:
            del self.states[key]

    def summary(self, s: int, stage: StageConfig, role: str) -> dict[str, Any] | None:
        best = self.best.get(f"*/{role}" if stage.keep == "best_val_all" else f"{s}/{role}")
        if best is None:
            return None
        # no validation accuracy (an empty split): no best epoch, so no result at it (its
        # first epoch's numbers would pass for a model selection); null in summary.json
        validated = best["val_acc"] == best["val_acc"]
        return {"stage": best["stage"], "best_val_epoch": best["epoch"] if validated else None,
                "val_acc": best["val_acc"] if validated else None,
                "test_acc_at_best_val": best["test_acc"] if validated else None,
                "test_bacc_at_best_val": best["test_bacc"] if validated else None,
                "last_test_acc": best["last_test_acc"],
                "last_test_bacc": best["last_test_bacc"], "kept": stage.keep}

    def state_dict(self) -> dict[str, Any]:
        return {"best": copy.deepcopy(self.best), "states": self.states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = dict(state["best"])
        self.states = dict(state["states"])
