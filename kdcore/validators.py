"""attrs validators for component and recipe parameters, shared by kdcore and its plugins.

Each one names the field and the accepted range in its message, which the recipe loader turns
into "file: key path: message". ``None`` passes every one of them, so an optional field
(``rate: float | None = attrs.field(default=None, validator=unit_interval)``) needs no wrapper;
a required field's type already rejects ``None``. NaN fails every range check.

The same validators serve plain functions (noise models, augmentations, dataset loaders,
architectures): put them in ``typing.Annotated`` metadata of a keyword parameter
(``rate: Annotated[float, unit_interval]``) and :func:`kdcore.config.bind_params` runs them
on the recipe's value before anything is loaded. There they are called with ``instance=None``
and a :class:`Param` in place of the attrs attribute; a validator may rely on
``attribute.name`` only. :func:`validate` runs them on any value, for a function's own runtime
check of a direct call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, get_args

import attrs

Validator = Callable[[Any, Any, Any], None]


@attrs.frozen
class Param:
    """What a validator sees as ``attribute`` outside attrs: the parameter's name."""

    name: str


def validate(value: Any, name: str, validators: Iterable[Validator]) -> None:
    """Run attrs-style ``validators`` on ``value`` (named ``name`` in their messages).

    Raises:
        ValueError or TypeError: the first validator that refuses the value.
    """
    for check in validators:
        check(None, Param(name), value)


def check_annotated(value: Any, name: str, annotation: Any) -> None:
    """Run the validators in the ``Annotated`` metadata of ``annotation`` on ``value``: the
    runtime twin of :func:`kdcore.config.bind_params`' check, for a function called directly.

    Raises:
        ValueError or TypeError: the first validator that refuses the value.
    """
    validate(value, name, (m for m in get_args(annotation)[1:] if callable(m)))


def require(value: Any, name: str, annotation: Any, *, where: str) -> None:
    """:func:`check_annotated` for a plain function's own check of a direct call.

    Raises:
        KdcoreError: ``"{where}: {the validator's message}"``.
    """
    from kdcore.errors import KdcoreError

    try:
        check_annotated(value, name, annotation)
    except (ValueError, TypeError) as exc:
        raise KdcoreError(f"{where}: {exc}") from None


def positive(instance: Any, attribute: Any, value: Any) -> None:
    """``0 < value < inf`` (NaN fails): a temperature, a rate or a size of ``inf`` gives no
    number a run can use (a KD term at T = inf is NaN at the first step)."""
    if value is not None and not value > 0:
        raise ValueError(f"'{attribute.name}' must be positive, got {value!r}")
    if value == math.inf:
        raise ValueError(f"'{attribute.name}' must be finite, got {value!r}")


def non_negative(instance: Any, attribute: Any, value: Any) -> None:
    """``value >= 0`` (NaN fails)."""
    if value is not None and not value >= 0:
        raise ValueError(f"'{attribute.name}' must be >= 0, got {value!r}")


def finite(instance: Any, attribute: Any, value: Any) -> None:
    """A finite number: NaN and +-inf fail."""
    if value is not None and not math.isfinite(value):
        raise ValueError(f"'{attribute.name}' must be a finite number, got {value!r}")


def no_nul(instance: Any, attribute: Any, value: Any) -> None:
    """A string without NUL bytes: names and paths become file names, and the OS refuses them
    there (``ValueError: embedded null byte``) long after the recipe was read."""
    if isinstance(value, str) and "\0" in value:
        raise ValueError(f"'{attribute.name}' contains a NUL byte (\\0), which no name or path "
                         f"may hold: {value!r}")


def below_output_dir(instance: Any, attribute: Any, value: Any) -> None:
    """A run's name, its folder under ``run.output_dir``: a relative path that stays there
    (``cifar10/amlkd`` groups runs; ``""``, ``.``, ``../x`` or ``/x`` would put the run in
    ``output_dir`` itself, beside it or anywhere)."""
    if not isinstance(value, str):
        return
    parts = value.split("/")
    if not value.strip() or any(p in ("", ".", "..") for p in parts):  # "/x": "" first
        raise ValueError(f"'{attribute.name}' must be a folder name below run.output_dir "
                         f"(parts joined by '/', none empty, '.' or '..'), got {value!r}")


def all_of(*validators: Validator) -> Validator:
    """Every one of ``validators``, in order (the first failure is reported)."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        for v in validators:
            v(instance, attribute, value)

    return check


finite_non_negative = all_of(finite, non_negative)
"""``0 <= value < inf``: a weight decay, a duration."""

finite_positive = all_of(finite, positive)
"""``0 < value < inf``: a scale, a temperature."""


def between(low: float, high: float, *, include_low: bool = True, include_high: bool = True,
            what: str = "") -> Validator:
    """A validator of ``low <= value <= high``, each end open or closed; ``what`` adds a word
    on the meaning to the message (``"smallest / largest class"``)."""
    left, right = ("[" if include_low else "("), ("]" if include_high else ")")

    def _fmt(x: float) -> str:
        return str(int(x)) if math.isfinite(x) and float(x).is_integer() else str(x)

    span = f"{left}{_fmt(low)}, {_fmt(high)}{right}" + (f" ({what})" if what else "")

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        above = value >= low if include_low else value > low
        below = value <= high if include_high else value < high
        if not (above and below):
            raise ValueError(f"'{attribute.name}' must be in {span}, got {value!r}")

    return check


softmax_temperature = between(1e-3, 1e3, what="a softmax temperature")
"""``0.001 <= value <= 1000``: a softmax temperature. Every published value lies far inside;
beyond it float32 breaks: logits / T overflows for a tiny T, and a KD term's T**2 factor is
infinite from T = 2e19 on (0 times inf is NaN at the first step)."""


def each(validator: Validator) -> Validator:
    """Apply ``validator`` to every item of a list; the message names the item
    (``'hidden[1]' must be positive, got 0``)."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        for i, item in enumerate(value):
            validator(instance, Param(f"{attribute.name}[{i}]"), item)

    return check


def stochastic_matrix(instance: Any, attribute: Any, value: Any, *, tol: float = 1e-6) -> None:
    """A non-empty square table of finite, non-negative numbers whose rows each sum to 1
    (within ``tol``): a transition matrix, ``T[i][j]`` the probability of ``i -> j``."""
    if value is None:
        return
    name = attribute.name
    if not _is_table(value) or not value:
        raise ValueError(f"'{name}' must be a non-empty table of rows of numbers, got {value!r}")
    size = len(value)
    for i, row in enumerate(value):
        if len(row) != size:
            raise ValueError(
                f"'{name}' must be square: row {i} has {len(row)} entries, expected {size}")
        if any(not math.isfinite(x) or x < 0 for x in row):
            raise ValueError(f"'{name}': row {i} has a negative or non-finite entry")
        total = math.fsum(row)
        if abs(total - 1.0) > tol:
            raise ValueError(f"'{name}': row {i} sums to {total:.6g}, not 1")


def _is_table(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(
        isinstance(row, Sequence) and not isinstance(row, str)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row)
        for row in value
    )


unit_interval = between(0.0, 1.0)
"""``0 <= value <= 1``: a probability, a mixing weight."""

below_one = between(0.0, 1.0, include_high=False)
"""``0 <= value < 1``: a rate, a fraction that cannot be everything (SGD's momentum: at 1 and
above its buffer grows without bound)."""

MAX_LR = 10.0
"""The largest learning rate of a model's or a component's own optimiser: published SGD recipes
for these networks stay at or below ~1 (0.1 x batch/256 with linear scaling); 10 leaves room
for large-batch scaling while 1e308 (a typo, or a fuzzer) overflows the first update."""

learning_rate = between(0.0, MAX_LR, what="a learning rate")
"""``0 <= value <= MAX_LR``: a learning rate (0: the parameters do not move)."""

MAX_BATCH_SIZE = 2**20
"""The largest batch: a batch of a million samples fits no accelerator; the bound catches typos
such as ``1e9`` (``data.batch_size``, a component's own batches: MLC's gold batch)."""

def decay_bound(momentum: float = 0.0, *, nesterov: bool = False,
                decoupled: bool = False) -> float:
    """The ``lr x weight_decay`` past which weight decay alone grows the weights every step,
    so that training diverges whatever the data: the stability bound of ``p <- p - lr wd p``
    through the update rule, ``2 (1 + momentum)`` for SGD's momentum (torch's heavy ball),
    ``2 (1 + momentum) / (1 + 2 momentum)`` for its Nesterov step, 2 for decoupled decay
    (AdamW's ``p <- (1 - lr wd) p``)."""
    if decoupled:
        return 2.0
    return 2 * (1 + momentum) / (1 + 2 * momentum if nesterov else 1)


def check_decay(lr: float, weight_decay: float, bound: float, what: str) -> None:
    """A ``ValueError`` when ``lr x weight_decay`` is past ``bound`` (:func:`decay_bound`) for
    ``what`` (the optimiser named)."""
    if lr * weight_decay > bound:
        raise ValueError(f"lr x weight_decay = {lr * weight_decay:g} is past {bound:g} ({what}): "
                         "weight decay alone then grows the weights at every step, so training "
                         "at this rate diverges; lower one of them")


FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32, the type kdcore's tensors compute in."""


def float32(instance: Any, attribute: Any, value: Any) -> None:
    """A number a float32 tensor holds: ``|value| <= FLOAT32_MAX``, or +-inf (a bound that is
    no bound); NaN fails. ``1e300`` fails: torch refuses to put it in a float32 tensor
    (``clamp``, ``full``) mid-run, where ``inf`` works."""
    if value is not None and not (abs(value) <= FLOAT32_MAX or math.isinf(value)):
        raise ValueError(f"'{attribute.name}' must be a float32 number (magnitude at most "
                         f"3.4e38, or inf), got {value!r}")


def finite_float32(instance: Any, attribute: Any, value: Any) -> None:
    """A finite number a float32 tensor holds: ``|value| <= FLOAT32_MAX``; NaN and +-inf fail.
    For a value every step computes with (a loss weight, a decay, a noise scale), where inf is
    no bound but a loss of inf; its message names only what it accepts."""
    if value is not None and not abs(value) <= FLOAT32_MAX:
        raise ValueError(f"'{attribute.name}' must be a finite float32 number (magnitude at "
                         f"most 3.4e38), got {value!r}")
