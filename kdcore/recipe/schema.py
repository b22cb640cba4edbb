"""The recipe's typed schema: one attrs class per table, each number with its range.

Every bound below is checked when a recipe is read (``kdcore check`` included), so a value that
would only fail, or quietly misbehave, once training starts is refused with the file, the key
path and the accepted range. The bounds that are not mathematical facts:

* :data:`~kdcore.validators.MAX_LR` = 10 (:data:`kdcore.validators.learning_rate`, shared with
  components' own optimisers). ``lr = 0`` is allowed: a role that a stage "trains" without
  moving, which tests use to hold a model fixed.
* :data:`MAX_THREADS` = 4096: more threads than any CPU has; ``10**6`` fails inside torch.
* :data:`MAX_WORKERS` = 256: DataLoader processes; each is a process of its own.
* :data:`~kdcore.validators.MAX_BATCH_SIZE` = 2**20: a batch of a million samples fits no
  accelerator; the bound catches typos such as ``1e9``.
* ``gamma`` of a multistep schedule may exceed 1, but the learning rate it reaches must stay
  within :data:`~kdcore.validators.MAX_LR` (checked with the recipe, :mod:`kdcore.recipe.resolve`).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Literal

import attrs

from kdcore.config import unstructure
from kdcore.device import device_name
from kdcore.recipe.writer import dumps_toml
from kdcore.validators import (
    MAX_BATCH_SIZE,
    all_of,
    below_one,
    below_output_dir,
    between,
    check_decay,
    decay_bound,
    each,
    finite_float32,
    finite_non_negative,
    finite_positive,
    learning_rate,
    no_nul,
    non_negative,
)

MAX_SEED = 2**63 - 1
"""Seeds are torch's unsigned 64-bit seeds; kdcore adds small offsets per generator."""

MAX_THREADS = 4096
MAX_WORKERS = 256
NAME_BYTES = 255
"""The longest stage, component or model-role name (UTF-8 bytes): the history's string table
holds names of this length."""
MAX_TIMEOUT_S = 7 * 24 * 3600.0
"""The longest process-group timeout: a week (a hung collective is found within it)."""
_batch_size = between(1, MAX_BATCH_SIZE)


@attrs.frozen
class RunConfig:
    """``[run]``: identity and reproducibility of the run.

    Attributes:
        name: the run's name; its directory is ``output_dir/name`` unless ``--out`` is given.
        seed: seeds data splits, noise, initialisation, batch order and augmentation; an
            integer in [0, 2**63 - 1].
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
            (:mod:`kdcore.device`).
        output_dir: where run directories go.
        threads: CPU threads for torch (0: torch's default), at most :data:`MAX_THREADS`.
        checkpoint_interval_s: the least time between two epoch checkpoints, in seconds; the
            end of every stage is always checkpointed. ``0`` checkpoints every epoch. A kill
            loses at most this much training plus one epoch; ``--resume`` replays it
            bit for bit. Writing the checkpoint every epoch costs a few percent of a short epoch.
        precision: ``fp32``; ``bf16`` runs the models under autocast in bfloat16 (CPU and
            CUDA); ``fp16`` in float16 with a gradient scaler (CUDA only). Logits and features
            reach the components in float32 either way, so every loss is computed in float32.
        deterministic: torch's deterministic kernels, cuDNN's autotuner off and cuBLAS's
            workspace fixed, so that a GPU run gives the same numbers from the same seed and
            resumes bit for bit (:mod:`kdcore.torch_state`); slower on a GPU. The CPU's
            kernels are deterministic either way. ``false`` leaves torch's settings as the
            process has them.
        compile: compile every model with ``torch.compile`` (in place: weights and checkpoints
            keep their names); pays a compilation once per process for faster steps on a GPU.
        channels_last: keep conv nets and their image batches in channels-last memory order
            (None: on CUDA, where its kernels are faster; never on the CPU).
        loggers: registered loggers that mirror every epoch's metrics (``"tensorboard"``,
            ``"csv"``, or a plugin's), each writing under ``<run_dir>/logs/<name>/``.
        history_skip: ledger columns kept out of ``history.h5``, as shell patterns
            (``"logits/*"``); components still read them during the run. Training logits
            are most of a history when C is large (50,000 samples of 100 classes: 8.5 MB of
            an epoch row's 8.7), and ``label-issues`` and ``inspect --cartography`` need them.
        distributed_timeout_s: how long a process of a distributed run waits in a collective
            for the others before the run fails (None: torch's default, 10 minutes with NCCL,
            30 with gloo); rank 0's work between two collectives (the history row, a
            checkpoint) must fit in it. At least 1 s, at most :data:`MAX_TIMEOUT_S`.
    """

    name: str = attrs.field(default="run", validator=all_of(no_nul, below_output_dir))
    seed: int = attrs.field(default=0, validator=between(0, MAX_SEED))
    device: str = attrs.field(default="auto", validator=device_name)
    output_dir: str = attrs.field(default="runs", validator=no_nul)
    threads: int = attrs.field(default=0, validator=between(0, MAX_THREADS))
    checkpoint_interval_s: float = attrs.field(default=30.0, validator=finite_non_negative)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    deterministic: bool = False
    compile: bool = False
    channels_last: bool | None = None
    loggers: list[str] = attrs.field(factory=list, validator=each(no_nul))
    history_skip: list[str] = attrs.field(factory=list, validator=each(no_nul))
    distributed_timeout_s: float | None = attrs.field(
        default=None, validator=between(1, MAX_TIMEOUT_S))

    def kept_in_history(self, column: str) -> bool:
        """Whether the history keeps ledger column ``column`` (no ``history_skip`` pattern
        matches it)."""
        return not any(fnmatch.fnmatchcase(column, p) for p in self.history_skip)


@attrs.frozen
class NoiseConfig:
    """``[data.noise]``: the label-noise model applied to the training (and validation) split.

    Attributes:
        model: a registered noise model (``symmetric``, ``pair_flip``, ``instance_dependent``,
            ``transition_matrix``, ``cifar_n``, ``none``).
        params: its parameters (``rate = 0.4``, ...), checked by the model's annotations.
        apply_to_val: corrupt the validation split too, as a practitioner's would be.
    """

    model: str = "none"
    params: dict[str, Any] = attrs.Factory(dict)
    apply_to_val: bool = True


@attrs.frozen
class AugmentConfig:
    """One entry of ``data.augment``: a registered batch augmentation and its parameters."""

    name: str
    params: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class DataConfig:
    """``[data]``: the dataset, its splits and the noise.

    Attributes:
        dataset: a registered dataset loader (``digits``, ``fashion_mnist``, ...).
        params: the loader's parameters.
        val_fraction: share of the training set held out for validation (noisy labels), in
            [0, 1).
        gold_per_class: size per class of a clean, class-balanced "gold" split (0: none).
        test_fraction: share carved out as the test set when the dataset has none (default
            0.2), in (0, 1): a run without a test set has nothing to report; a dataset with its
            own test split ignores it, with a warning.
            ``val_fraction + test_fraction`` must stay below 1.
        train_subset: keep only this many training samples (stratified; 0: all).
        batch_size: training batch size, in [1, :data:`MAX_BATCH_SIZE`].
        eval_batch_size: batch size of evaluation and full-set feature passes (same range).
        augment: batch augmentations applied to training batches, in order.
        workers: DataLoader processes that decode a streaming dataset's batches ahead of
            training (a loader's ``stream = true``; 0: in the training process), at most
            :data:`MAX_WORKERS`. In-memory datasets ignore it. It changes no result.
    """

    dataset: str = "digits"
    params: dict[str, Any] = attrs.Factory(dict)
    noise: NoiseConfig = attrs.Factory(NoiseConfig)
    val_fraction: float = attrs.field(default=0.1, validator=below_one)
    gold_per_class: int = attrs.field(default=0, validator=non_negative)
    test_fraction: float | None = attrs.field(
        default=None, validator=between(0.0, 1.0, include_low=False, include_high=False))
    train_subset: int = attrs.field(default=0, validator=non_negative)
    batch_size: int = attrs.field(default=64, validator=_batch_size)
    eval_batch_size: int = attrs.field(default=1024, validator=_batch_size)
    augment: list[AugmentConfig] = attrs.Factory(list)
    workers: int = attrs.field(default=0, validator=between(0, MAX_WORKERS))


def _nesterov_needs_momentum(instance: Any, attribute: Any, value: bool) -> None:
    # torch's SGD raises a ValueError for this when the optimiser is built, mid set-up
    if value and instance.name == "sgd" and instance.momentum == 0:
        raise ValueError(f"'{attribute.name}' needs momentum > 0 (SGD's Nesterov step is "
                         "defined on the momentum buffer)")


def _decay_converges(instance: Any, attribute: Any, value: float) -> None:
    # at the base rate; a multistep schedule that raises the rate is checked with the recipe
    # (kdcore.recipe.rules), which knows how many epochs the role trains
    limit = instance.decay_limit()
    if limit is not None:
        check_decay(instance.lr, value, *limit)


@attrs.frozen
class OptimizerConfig:
    """The optimiser of one model role.

    Attributes:
        name: ``sgd``, ``adam`` or ``adamw``.
        lr: the base learning rate, in [0, :data:`~kdcore.validators.MAX_LR`].
        momentum: SGD's momentum, in [0, 1).
        weight_decay: >= 0 and a float32 number (``1e300`` stopped the first step); with
            ``sgd`` and ``adamw``, ``lr x weight_decay`` at most
            :func:`~kdcore.validators.decay_bound` (past it the decay alone diverges), at the
            base rate and at the highest rate the role's schedule reaches.
        nesterov: SGD's Nesterov momentum (needs ``momentum > 0``).
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = attrs.field(default=0.05, validator=learning_rate)
    momentum: float = attrs.field(default=0.9, validator=below_one)
    weight_decay: float = attrs.field(
        default=5e-4, validator=all_of(finite_non_negative, finite_float32, _decay_converges))
    nesterov: bool = attrs.field(default=False, validator=_nesterov_needs_momentum)

    def decay_limit(self) -> tuple[float, str] | None:
        """The ``lr x weight_decay`` past which this optimiser's weight decay alone diverges
        (:func:`~kdcore.validators.decay_bound`) and the optimiser as a message names it;
        ``None`` for Adam, whose L2 decay goes through its normalised step, which no bound
        of this kind limits."""
        if self.name == "sgd":
            return (decay_bound(self.momentum, nesterov=self.nesterov),
                    f"{'Nesterov ' * self.nesterov}SGD with momentum {self.momentum:g}")
        if self.name == "adamw":
            return decay_bound(decoupled=True), "AdamW"
        return None


@attrs.frozen
class ScheduleConfig:
    """The learning-rate schedule of one model role, stepped once per epoch of a stage.

    Attributes:
        name: ``constant``, ``multistep`` (``milestones``, ``gamma``) or ``cosine`` (from the
            base rate towards 0 over every epoch of every stage that trains the role: torch's
            ``CosineAnnealingLR`` with ``T_max`` that many epochs, stepped once per epoch).
        milestones: epochs (counted over the role's training) at which the rate is multiplied
            by ``gamma``; each >= 0.
        gamma: finite, > 0.
    """

    name: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: list[int] = attrs.field(factory=list, validator=each(non_negative))
    gamma: float = attrs.field(default=0.1, validator=finite_positive)


@attrs.frozen
class ModelConfig:
    """``[models.<role>]``: one model of the run.

    Attributes:
        arch: a registered architecture (``mlp``, ``cnn``, ``resnet8``, ``wrn``, ...).
        params: the architecture's parameters.
        checkpoint: weights to load before training (a state dict saved by kdcore or a plain
            ``state_dict``); loaded with ``weights_only=True``; a missing file is an error.
        optimizer, schedule: how the role is trained in the stages that train it.
        cache_outputs: in the stages that do not train this role, read its outputs on a
            training batch (``batch.out(role)``) from one pass over the training set, made
            when first asked for and kept while its weights do not change, instead of
            running it on every batch of every epoch; a recipe with ``data.augment`` is
            refused (its batches are not the stored inputs). Equal to the per-batch outputs
            up to float rounding (a different batching), so not bit for bit the uncached run.
        enabled: ``false`` drops a role inherited through ``extends``.
    """

    arch: str = "mlp"
    params: dict[str, Any] = attrs.Factory(dict)
    checkpoint: str | None = attrs.field(default=None, validator=no_nul)
    optimizer: OptimizerConfig = attrs.Factory(OptimizerConfig)
    schedule: ScheduleConfig = attrs.Factory(ScheduleConfig)
    cache_outputs: bool = False
    enabled: bool = True

    def lr_at(self, epoch: int, epochs: int) -> float:
        """The learning rate at the role's ``epoch``-th training epoch out of ``epochs``.

        Epochs count over every stage that trains the role, so a schedule spans warm-up and
        later stages alike. A pure function of the recipe: nothing needs checkpointing.
        """
        base, sched = self.optimizer.lr, self.schedule
        if sched.name == "multistep":
            return base * sched.gamma ** sum(epoch >= m for m in sched.milestones)
        if sched.name == "cosine":
            return base * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
        return base

    def highest_lr(self, epochs: int) -> float:
        """The highest of the role's first ``epochs`` training rates (:meth:`lr_at`; the base
        rate when ``epochs`` is 0)."""
        # a multistep rate changes only at a milestone; a cosine falls from the base rate
        marks = (m for m in self.schedule.milestones if m < epochs)
        return max(self.lr_at(e, epochs) for e in {0, *marks})


@attrs.frozen
class ComponentConfig:
    """One entry of ``stages.components``.

    Attributes:
        use: the registered component name.
        name: its label in this stage (default: ``use``); tags everything it produces.
        models: the model roles it serves (default: the roles the stage trains).
        terms: for selectors and weighters, the transfer terms they act on (default: all).
        weight: for transfer components, the factor on their loss term: finite, and a float32
            number (``1e39`` is infinite in float32: every step's loss was).
        enabled: ``false`` leaves it out (handy in ablations that extend a recipe).
        params: validated by the component's own ``Params`` class.
    """

    use: str
    name: str | None = None
    models: list[str] | None = None
    terms: list[str] = attrs.Factory(list)
    weight: float = attrs.field(default=1.0, validator=finite_float32)
    enabled: bool = True
    params: dict[str, Any] = attrs.Factory(dict)

    @property
    def label(self) -> str:
        return self.name or self.use


@attrs.frozen
class StageConfig:
    """One entry of ``[[stages]]``: epochs over which some models train with some components.

    Attributes:
        name: unique stage name.
        epochs: number of epochs (0 is allowed: a stage of epoch-level work only).
        train: the roles trained in this stage; every other role used is frozen.
        eval: roles evaluated each epoch (default: ``train``).
        keep: ``best_val`` restores, at the stage's end, the weights of the epoch with the best
            validation accuracy (measured on noisy validation labels) in this stage;
            ``best_val_all`` the best over every stage that trained the role so far (its
            best epoch may lie in an earlier stage, a warm-up say); ``last`` keeps the last.
        components: in the order the engine calls them.
    """

    name: str
    epochs: int = attrs.field(validator=non_negative)
    train: list[str] = attrs.Factory(list)
    eval: list[str] | None = None
    keep: Literal["best_val", "best_val_all", "last"] = "last"
    components: list[ComponentConfig] = attrs.Factory(list)

    @property
    def eval_roles(self) -> list[str]:
        return list(self.eval if self.eval is not None else self.train)


@attrs.frozen
class Recipe:
    """A whole recipe, after ``extends`` and overrides.

    Attributes:
        source: the file it was read from (not part of the TOML).
    """

    run: RunConfig = attrs.Factory(RunConfig)
    data: DataConfig = attrs.Factory(DataConfig)
    models: dict[str, ModelConfig] = attrs.Factory(dict)
    stages: list[StageConfig] = attrs.Factory(list)
    extends: str | None = attrs.field(default=None, validator=no_nul)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = unstructure(self)
        out.pop("source", None)
        out.pop("extends", None)
        return out

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())
