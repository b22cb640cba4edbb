"""Recipes: TOML files read into typed, validated attrs objects.

A recipe may ``extends = "other.toml"`` (a path relative to itself) and override keys; tables
merge key by key, and lists of tables whose entries carry a ``name`` (stages, components) merge
entry by entry, matched by name, new names appended. ``--set key.path=value`` overrides apply
after that, with list entries addressed by index or by name
(``stages.student.components.kd.weight=0``). Nothing in a recipe is evaluated as code.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from kdcore.config import structure, unstructure
from kdcore.errors import RecipeError, did_you_mean
from kdcore.validators import below_one, non_negative, positive


@attrs.frozen
class RunConfig:
    """``[run]``: identity and reproducibility of the run.

    Attributes:
        name: the run's name; its directory is ``output_dir/name`` unless ``--out`` is given.
        seed: seeds data splits, noise, initialisation, batch order and augmentation.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        output_dir: where run directories go.
        threads: CPU threads for torch (0: torch's default).
        checkpoint_interval_s: the least time between two epoch checkpoints, in seconds; the
            end of every stage is always checkpointed. ``0`` checkpoints every epoch. A kill
            loses at most this much training plus one epoch; ``--resume`` replays it
            bit for bit. Writing the checkpoint every epoch costs a few percent of a short epoch.
    """

    name: str = "run"
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"
    threads: int = attrs.field(default=0, validator=non_negative)
    checkpoint_interval_s: float = attrs.field(default=30.0, validator=non_negative)


@attrs.frozen
class NoiseConfig:
    """``[data.noise]``: the label-noise model applied to the training (and validation) split.

    Attributes:
        model: a registered noise model (``symmetric``, ``pair_flip``, ``instance_dependent``,
            ``transition_matrix``, ``cifar_n``, ``none``).
        params: its parameters (``rate = 0.4``, ...).
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
        val_fraction: share of the training set held out for validation (noisy labels).
        gold_per_class: size per class of a clean, class-balanced "gold" split (0: none).
        test_fraction: share carved out as the test set when the dataset has none (default
            0.2); a dataset with its own test split ignores it, with a warning.
        train_subset: keep only this many training samples (stratified; 0: all).
        batch_size: training batch size.
        eval_batch_size: batch size of evaluation and full-set feature passes.
        augment: batch augmentations applied to training batches, in order.
    """

    dataset: str = "digits"
    params: dict[str, Any] = attrs.Factory(dict)
    noise: NoiseConfig = attrs.Factory(NoiseConfig)
    val_fraction: float = attrs.field(default=0.1, validator=below_one)
    gold_per_class: int = attrs.field(default=0, validator=non_negative)
    test_fraction: float | None = attrs.field(default=None, validator=attrs.validators.optional(
        below_one))
    train_subset: int = attrs.field(default=0, validator=non_negative)
    batch_size: int = attrs.field(default=64, validator=positive)
    eval_batch_size: int = attrs.field(default=1024, validator=positive)
    augment: list[AugmentConfig] = attrs.Factory(list)


@attrs.frozen
class OptimizerConfig:
    """The optimiser of one model role.

    Attributes:
        name: ``sgd``, ``adam`` or ``adamw``.
        lr, momentum, weight_decay, nesterov: the usual meanings (momentum/nesterov: SGD only).
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = attrs.field(default=0.05, validator=non_negative)
    momentum: float = 0.9
    weight_decay: float = attrs.field(default=5e-4, validator=non_negative)
    nesterov: bool = False


@attrs.frozen
class ScheduleConfig:
    """The learning-rate schedule of one model role, stepped once per epoch of a stage.

    Attributes:
        name: ``constant``, ``multistep`` (``milestones``, ``gamma``) or ``cosine`` (to 0 at
            the stage's last epoch).
    """

    name: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: list[int] = attrs.Factory(list)
    gamma: float = 0.1


@attrs.frozen
class ModelConfig:
    """``[models.<role>]``: one model of the run.

    Attributes:
        arch: a registered architecture (``mlp``, ``cnn``, ``resnet8``, ``wrn``, ...).
        params: the architecture's parameters.
        checkpoint: weights to load before training (a state dict saved by kdcore or a plain
            ``state_dict``); loaded with ``weights_only=True``; a missing file is an error.
        optimizer, schedule: how the role is trained in the stages that train it.
        enabled: ``false`` drops a role inherited through ``extends``.
    """

    arch: str = "mlp"
    params: dict[str, Any] = attrs.Factory(dict)
    checkpoint: str | None = None
    optimizer: OptimizerConfig = attrs.Factory(OptimizerConfig)
    schedule: ScheduleConfig = attrs.Factory(ScheduleConfig)
    enabled: bool = True


@attrs.frozen
class ComponentConfig:
    """One entry of ``stages.components``.

    Attributes:
        use: the registered component name.
        name: its label in this stage (default: ``use``); tags everything it produces.
        models: the model roles it serves (default: the roles the stage trains).
        terms: for selectors and weighters, the transfer terms they act on (default: all).
        weight: for transfer components, the factor on their loss term.
        enabled: ``false`` leaves it out (handy in ablations that extend a recipe).
        params: validated by the component's own ``Params`` class.
    """

    use: str
    name: str | None = None
    models: list[str] | None = None
    terms: list[str] = attrs.Factory(list)
    weight: float = 1.0
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
            validation accuracy (measured on noisy validation labels); ``last`` keeps the last.
        components: in the order the engine calls them.
    """

    name: str
    epochs: int = attrs.field(validator=non_negative)
    train: list[str] = attrs.Factory(list)
    eval: list[str] | None = None
    keep: Literal["best_val", "last"] = "last"
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
    extends: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = unstructure(self)
        out.pop("source", None)
        out.pop("extends", None)
        return out

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())


# -- reading ---------------------------------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; a missing or malformed file is a :class:`RecipeError`."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except IsADirectoryError:
        raise RecipeError(f"recipe path is a directory: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"malformed TOML: {exc}", file=str(path)) from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe: {exc}", file=str(path)) from None


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe's data with every ``extends`` merged in (the base first)."""
    path = Path(path).resolve()
    if path in _seen:
        raise RecipeError(f"recipe extends itself in a cycle: {' -> '.join(map(str, _seen))}")
    data = read_toml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(f"got {parent!r}, expected a file path", file=str(path), key="extends")
    base = load_raw(path.parent / parent, (*_seen, path))
    return merge(base, data)


def merge(base: Any, over: Any) -> Any:
    """Deep-merge ``over`` into ``base`` (see the module docstring for lists of tables)."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if _named_list(base) and _named_list(over):
        out_list = [copy.deepcopy(item) for item in base]
        names = [_entry_name(item) for item in out_list]
        for item in over:
            name = _entry_name(item)
            if name in names:
                i = names.index(name)
                out_list[i] = merge(out_list[i], item)
            else:
                out_list.append(copy.deepcopy(item))
                names.append(name)
        return out_list
    return copy.deepcopy(over)


def _entry_name(item: Mapping[str, Any]) -> Any:
    return item.get("name", item.get("use"))


def _named_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, Mapping) and _entry_name(v) is not None for v in value)
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=VALUE"`` -> (["a", "b", "c"], value); VALUE is read as TOML, else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"override '{text}' is not of the form key.path=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_override(data: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Set ``value`` at ``path``; list entries are addressed by index or by name."""
    node: Any = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            i = _list_position(node, part, where)
            if last:
                node[i] = value
            else:
                node = node[i]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"cannot set a key inside {node!r}", key=where)
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _list_position(node: list[Any], part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        i = int(part)
        if -len(node) <= i < len(node):
            return i % len(node)
        raise RecipeError(f"index {i} out of range (length {len(node)})", key=where)
    names = [_entry_name(x) if isinstance(x, Mapping) else None for x in node]
    if part in names:
        return names.index(part)
    known = [n for n in names if n is not None]
    raise RecipeError(
        f"no entry named '{part}'{did_you_mean(part, known)}; "
        f"entries: {', '.join(map(str, known))}",
        key=where,
    )


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, extend, override and type-check a recipe file.

    Component parameters are checked later, by the plugin that owns each component (see
    :func:`kdcore.engine.build_components`), because only it knows their types.
    """
    data = load_raw(path)
    for text in overrides:
        key_path, value = parse_override(text)
        apply_override(data, key_path, value)
    return recipe_from_dict(data, source=str(path))


def recipe_from_dict(data: Mapping[str, Any], source: str | None = None) -> Recipe:
    """Type-check plain recipe data (already extended and overridden)."""
    try:
        recipe = structure(Recipe, {k: v for k, v in data.items() if k != "source"})
    except RecipeError as exc:
        raise exc.at(file=source) from None
    recipe = attrs.evolve(recipe, source=source)
    try:
        check_consistency(recipe)
    except RecipeError as exc:
        raise exc.at(file=source) from None
    return recipe


def check_consistency(recipe: Recipe) -> None:
    """Cross-field rules that no single field's type can express."""
    if not recipe.stages:
        raise RecipeError("a recipe needs at least one [[stages]] entry", key="stages")
    roles = {r for r, m in recipe.models.items() if m.enabled}
    seen_stages: set[str] = set()
    for s, stage in enumerate(recipe.stages):
        key = f"stages[{s}]"
        if stage.name in seen_stages:
            raise RecipeError(f"duplicate stage name '{stage.name}'", key=f"{key}.name")
        seen_stages.add(stage.name)
        for field in ("train", "eval"):
            for role in getattr(stage, field) or []:
                if role not in roles:
                    raise RecipeError(
                        f"unknown model role '{role}'{did_you_mean(role, roles)}; "
                        f"[models] defines: {', '.join(sorted(roles)) or 'none'}",
                        key=f"{key}.{field}",
                    )
        labels: set[str] = set()
        for c, comp in enumerate(stage.components):
            ckey = f"{key}.components[{c}]"
            if comp.label in labels and comp.enabled:
                raise RecipeError(
                    f"two components labelled '{comp.label}'; give one a different 'name'",
                    key=f"{ckey}.name",
                )
            labels.add(comp.label)
            for role in comp.models or []:
                if role not in roles:
                    raise RecipeError(
                        f"unknown model role '{role}'{did_you_mean(role, roles)}",
                        key=f"{ckey}.models",
                    )
            if comp.models is None and not stage.train and comp.enabled:
                raise RecipeError(
                    "the stage trains no model, so name the component's 'models'",
                    key=f"{ckey}.models",
                )


# -- writing ---------------------------------------------------------------------------------


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Write plain data as TOML (enough for resolved recipes: tables, arrays of tables)."""
    lines: list[str] = []
    _emit_table(lines, [], data)
    return "\n".join(lines).strip() + "\n"


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _emit_table(lines: list[str], prefix: list[str], table: Mapping[str, Any]) -> None:
    plain = {k: v for k, v in table.items()
             if not (isinstance(v, Mapping) and v) and not _is_table_list(v)}
    for key, value in plain.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        if key in plain:
            continue
        path = [*prefix, _toml_key(key)]
        if _is_table_list(value):
            for item in value:
                lines.extend(["", f"[[{'.'.join(path)}]]"])
                _emit_table(lines, path, item)
        else:
            lines.extend(["", f"[{'.'.join(path)}]"])
            _emit_table(lines, path, value)
