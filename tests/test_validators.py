"""kdcore.validators: the shared parameter checks, their bounds and their messages."""

from __future__ import annotations

import math
import re
from typing import Annotated

import attrs
import pytest
import torch

from kdcore.errors import KdcoreError, RecipeError
from kdcore.recipe import recipe_from_dict
from kdcore.validators import (
    Param,
    all_of,
    below_one,
    between,
    check_annotated,
    check_decay,
    decay_bound,
    each,
    finite,
    finite_non_negative,
    finite_positive,
    no_nul,
    non_negative,
    positive,
    require,
    stochastic_matrix,
    unit_interval,
    validate,
)


@attrs.frozen
class P:
    pos: float | None = attrs.field(default=1.0, validator=positive)
    nonneg: float = attrs.field(default=0.0, validator=non_negative)
    unit: float = attrs.field(default=1.0, validator=unit_interval)
    rate: float = attrs.field(default=0.0, validator=below_one)
    ratio: float = attrs.field(default=1.0, validator=between(0.0, 1.0, include_low=False,
                                                               what="smallest / largest"))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("pos", 0.0, "'pos' must be positive, got 0.0"),
    ("pos", math.nan, "'pos' must be positive"),
    ("pos", math.inf, "'pos' must be finite, got inf"),
    ("nonneg", -1, "'nonneg' must be >= 0, got -1"),
    ("unit", 1.5, "'unit' must be in [0, 1], got 1.5"),
    ("rate", 1.0, "'rate' must be in [0, 1), got 1.0"),
    ("ratio", 0.0, "'ratio' must be in (0, 1] (smallest / largest), got 0.0"),
])
def test_out_of_range_is_named(field, value, message):
    with pytest.raises(ValueError) as err:
        P(**{field: value})
    assert message in str(err.value)


def test_bounds_and_none_pass():
    low = P(pos=None, nonneg=0, unit=0.0, rate=0.999, ratio=1.0)
    assert (low.pos, low.nonneg, low.unit, low.rate, low.ratio) == (None, 0, 0.0, 0.999, 1.0)
    high = P(unit=1.0, ratio=1e-9)
    assert (high.unit, high.ratio) == (1.0, 1e-9)


@attrs.frozen
class Q:
    fin: float = attrs.field(default=0.0, validator=finite)
    scale: float = attrs.field(default=1.0, validator=finite_positive)
    decay: float = attrs.field(default=0.0, validator=finite_non_negative)
    sizes: list[int] = attrs.field(factory=list, validator=each(positive))
    path: str = attrs.field(default="", validator=no_nul)
    matrix: list[list[float]] | None = attrs.field(default=None, validator=stochastic_matrix)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("fin", math.inf, "'fin' must be a finite number, got inf"),
    ("fin", -math.inf, "'fin' must be a finite number"),
    ("fin", math.nan, "'fin' must be a finite number"),
    ("scale", math.inf, "'scale' must be a finite number"),
    ("scale", 0.0, "'scale' must be positive"),
    ("decay", -1e-9, "'decay' must be >= 0"),
    ("decay", math.inf, "'decay' must be a finite number"),
    ("sizes", [3, 0, 2], "'sizes[1]' must be positive, got 0"),
    ("path", "runs/a\0b", "'path' contains a NUL byte"),
    ("matrix", [], "non-empty table"),
    ("matrix", [[1.0, "x"], [0.0, 1.0]], "non-empty table"),
    ("matrix", [[True, False], [False, True]], "non-empty table"),
    ("matrix", [[1.0, 0.0], [1.0]], "must be square: row 1 has 1 entries, expected 2"),
    ("matrix", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "must be square: row 0 has 3 entries"),
    ("matrix", [[1.5, -0.5], [0.0, 1.0]], "row 0 has a negative or non-finite entry"),
    ("matrix", [[1.0, 0.0], [math.nan, 1.0]], "row 1 has a negative or non-finite entry"),
    ("matrix", [[1.0, 0.0], [math.inf, 1.0]], "row 1 has a negative or non-finite entry"),
    ("matrix", [[0.5, 0.4], [0.0, 1.0]], "row 0 sums to 0.9, not 1"),
])
def test_more_ranges_are_named(field, value, message):
    with pytest.raises(ValueError) as err:
        Q(**{field: value})
    assert message in str(err.value)


def test_more_ranges_accept_their_bounds():
    matrix = [[1 / 3 + 1e-8, 1 / 3, 1 / 3], [0, 1, 0], [0.0, 0.0, 1.0]]
    q = Q(fin=-1e300, scale=1e-300, decay=0.0, sizes=[1, 5], path="runs/a b", matrix=matrix)
    assert (q.fin, q.scale, q.decay, q.sizes, q.path) == (-1e300, 1e-300, 0.0, [1, 5], "runs/a b")
    assert q.matrix == matrix  # within the row-sum tolerance, kept as given
    empty = Q(sizes=[], matrix=None)
    assert empty.sizes == [] and empty.matrix is None


def test_all_of_reports_the_first_failure():
    both = all_of(non_negative, between(0.0, 1.0))
    with pytest.raises(ValueError, match="must be >= 0"):
        validate(-1.0, "x", [both])
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        validate(2.0, "x", [both])
    validate(0.5, "x", [both])


def test_validators_run_outside_attrs_with_a_name():
    with pytest.raises(ValueError, match="'rate' must be in"):
        validate(1.5, "rate", [unit_interval])
    with pytest.raises(ValueError, match="'rate' must be in"):
        check_annotated(1.5, "rate", Annotated[float, "a note", unit_interval])
    check_annotated(0.5, "rate", Annotated[float, unit_interval])
    check_annotated(5.0, "rate", float)  # no metadata: nothing to check


def test_require_raises_a_user_error_that_names_the_caller():
    with pytest.raises(KdcoreError, match=r"^cutout: 'size' must be positive, got 0$"):
        require(0, "size", Annotated[int, positive], where="cutout")


# -- interval ends and the words of the message (mutation run kdcore-validators) --------------


@pytest.mark.parametrize(("low_closed", "high_closed", "span"), [
    (True, True, "[0.5, 2]"), (False, True, "(0.5, 2]"), (True, False, "[0.5, 2)"),
    (False, False, "(0.5, 2)")])
def test_between_ends_open_or_closed(low_closed, high_closed, span):
    check = between(0.5, 2.0, include_low=low_closed, include_high=high_closed, what="a scale")
    for value, ok in ((0.5, low_closed), (2.0, high_closed), (1.0, True), (0.49, False),
                      (2.01, False)):
        if ok:
            check(None, Param("s"), value)
        else:
            with pytest.raises(ValueError, match=rf"^'s' must be in {re.escape(span)} \(a "
                               rf"scale\), got {value!r}$"):
                check(None, Param("s"), value)


def test_between_prints_its_ends_as_written():
    with pytest.raises(ValueError, match=r"^'x' must be in \[-inf, 0\.25\], got 1$"):
        between(-math.inf, 0.25)(None, Param("x"), 1)


def test_a_bad_transition_matrix_is_named():
    with pytest.raises(ValueError, match=r"^'T' must be square: row 0 has 1 entries"):
        stochastic_matrix(None, Param("T"), [[1.0], [0.0, 1.0]])


def test_float32_holds_what_a_float32_tensor_holds():
    import numpy as np

    from kdcore.validators import FLOAT32_MAX, float32

    largest = float(np.finfo(np.float32).max)
    assert FLOAT32_MAX == largest
    beyond = float(np.nextafter(largest, math.inf))
    for ok in (None, 0.0, -0.0, largest, -largest, math.inf, -math.inf, 1e-300):
        float32(None, Param("bound"), ok)
    for bad in (beyond, -beyond, 1e300, -1e308):
        with pytest.raises(ValueError, match=re.escape(
                "'bound' must be a float32 number (magnitude at most 3.4e38, or inf), got ")):
            float32(None, Param("bound"), bad)
    with pytest.raises(ValueError):
        float32(None, Param("bound"), math.nan)
    # what the bound is for: torch takes the largest into a float32 tensor, not the next one
    import torch

    torch.full((1,), largest)
    with pytest.raises(RuntimeError, match="overflow"):
        torch.full((1,), beyond)


def test_finite_float32_holds_what_a_float32_tensor_holds_and_no_infinity():
    """Where a value is computed with every step (a loss weight, a decay), inf is refused with
    the rest; the message says what is accepted, without the "or inf" of :func:`float32`."""
    import numpy as np

    from kdcore.validators import finite_float32

    largest = float(np.finfo(np.float32).max)
    beyond = float(np.nextafter(np.float64(largest), np.inf))
    for ok in (None, 0.0, -0.0, largest, -largest, 1e-300, 1):
        finite_float32(None, Param("w"), ok)
    for bad in (beyond, -beyond, 1e300, math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError) as err:
            finite_float32(None, Param("w"), bad)
        assert str(err.value) == ("'w' must be a finite float32 number (magnitude at most "
                                  f"3.4e38), got {bad!r}")


def test_learning_rate_is_a_models_range():
    from kdcore.recipe import MAX_LR
    from kdcore.validators import learning_rate

    assert MAX_LR == 10.0
    for ok in (None, 0.0, 1e-300, 10.0):
        learning_rate(None, Param("lr"), ok)
    for bad in (-1e-300, math.nextafter(10.0, 11.0), math.inf, math.nan):
        with pytest.raises(ValueError, match=re.escape("'lr' must be in [0, 10] (a learning "
                                                       "rate), got ")):
            learning_rate(None, Param("lr"), bad)


@pytest.mark.parametrize("name", ["", " ", ".", "..", "/abs", "a//b", "x/../y", "a/", "./a",
                                  "a/."])
def test_a_run_name_that_leaves_its_output_dir_is_refused(name):
    """run.name is the folder under run.output_dir: "" or "." put the run into output_dir
    itself, "../x" beside it, "/x" anywhere."""
    from kdcore.validators import below_output_dir

    @attrs.frozen
    class Run:
        name: str = attrs.field(validator=below_output_dir)

    with pytest.raises(ValueError) as err:
        Run(name)
    assert str(err.value) == ("'name' must be a folder name below run.output_dir (parts joined "
                              f"by '/', none empty, '.' or '..'), got {name!r}")


@pytest.mark.parametrize("name", ["run", "cifar10/amlkd-sym40", "a.b", "..a", "a b", "é"])
def test_run_names_below_the_output_dir_are_accepted(name):
    from kdcore.validators import below_output_dir

    @attrs.frozen
    class Run:
        name: str = attrs.field(validator=below_output_dir)

    assert Run(name).name == name


def _decayed(optimizer: str, a: float, momentum: float, nesterov: bool, steps: int = 4000
             ) -> float:
    """|p| after ``steps`` of torch's own optimiser with ``lr x weight_decay = a`` and a zero
    loss gradient, from p = 1: what weight decay alone does."""
    p = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    if optimizer == "adamw":
        opt = torch.optim.AdamW([p], lr=1.0, weight_decay=a)
    else:
        opt = torch.optim.SGD([p], lr=1.0, weight_decay=a, momentum=momentum, nesterov=nesterov)
    for _ in range(steps):
        p.grad = torch.zeros_like(p)
        opt.step()
    return float(p.detach().abs())


@pytest.mark.parametrize(("optimizer", "momentum", "nesterov"), [
    ("sgd", 0.0, False), ("sgd", 0.5, False), ("sgd", 0.9, False), ("sgd", 0.5, True),
    ("sgd", 0.9, True), ("adamw", 0.0, False)])
def test_the_decay_bound_is_where_torchs_own_step_starts_to_grow_the_weights(optimizer,
                                                                             momentum,
                                                                             nesterov):
    bound = decay_bound(momentum, nesterov=nesterov, decoupled=optimizer == "adamw")
    assert _decayed(optimizer, 0.99 * bound, momentum, nesterov) < 1e-3
    assert _decayed(optimizer, 1.01 * bound, momentum, nesterov) > 1e3


def test_decay_bound_defaults_and_check_decays_line():
    assert decay_bound() == 2.0 and decay_bound(0.5) == 3.0
    assert decay_bound(0.5, nesterov=True) == 1.5 and decay_bound(0.9, decoupled=True) == 2.0
    check_decay(1.0, 3.0, 3.0, "x")  # at the bound: accepted
    with pytest.raises(ValueError) as info:
        check_decay(2.0, 1.5, 2.9, "SGD with momentum 0.45")
    assert str(info.value) == (
        "lr x weight_decay = 3 is past 2.9 (SGD with momentum 0.45): weight decay alone then "
        "grows the weights at every step, so training at this rate diverges; lower one of them")


def test_a_model_optimiser_whose_decay_alone_diverges_is_refused():
    base = {"arch": "mlp", "params": {"hidden": [8]}}
    for optimizer, said in (
            ({"lr": 2.0, "weight_decay": 2.0}, "lr x weight_decay = 4 is past 3.8 (SGD with "
                                               "momentum 0.9)"),
            ({"lr": 1.0, "weight_decay": 1.6, "momentum": 0.5, "nesterov": True},
             "lr x weight_decay = 1.6 is past 1.5 (Nesterov SGD with momentum 0.5)"),
            ({"name": "adamw", "lr": 0.5, "weight_decay": 4.5}, "lr x weight_decay = 2.25 is "
                                                                "past 2 (AdamW)")):
        recipe = {"models": {"teacher": {**base, "optimizer": optimizer}},
                  "stages": [{"name": "s", "epochs": 1, "train": ["teacher"],
                              "components": [{"use": "ce"}]}]}
        with pytest.raises(RecipeError, match=re.escape(f"models.teacher.optimizer: {said}")):
            recipe_from_dict(recipe)
    for accepted in ({"name": "adam", "lr": 1.0, "weight_decay": 100.0},  # through its step
                     {"lr": 1.0, "weight_decay": 1.4, "momentum": 0.5, "nesterov": True},
                     {"lr": 1.0, "weight_decay": 3.8}):  # at the bound itself
        recipe_from_dict({"models": {"teacher": {**base, "optimizer": accepted}},
                          "stages": [{"name": "s", "epochs": 1, "train": ["teacher"],
                                      "components": [{"use": "ce"}]}]})
