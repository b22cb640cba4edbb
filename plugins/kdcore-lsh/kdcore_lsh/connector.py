"""The student connector ("2FC" of the LSHFM release).

When the student's feature size ``d_s`` differs from the teacher's ``D`` (or a connector is
forced), the student gets a connector ``Linear(d_s, D)`` (with bias, no normalisation or
activation) after its trunk, and its classifier ``Linear(d_s, C)`` is replaced by a new
``Linear(D, C)``. The mimicked student feature is the connector's output, so the model keeps
kdcore's contract: ``forward`` returns ``(logits, features)`` with ``features`` the input of
``classifier``.

The change is made **in place**: the run's models are a read-only mapping (``ctx.models``), so
the student stays the same object; it gains the submodule ``connector``, a new ``classifier``,
and a class that puts :class:`ConnectedModel` in front of its own, whose ``forward_features``
applies the connector to the trunk's. The trunk's parameters keep their names.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

import kdcore


class ConnectedModel(kdcore.KDModel):
    """A student whose trunk feeds a linear connector, then a new classifier.

    Never instantiated directly: :func:`attach_connector` gives a model a class derived from
    this one and from the model's own (``isinstance(model, ConnectedModel)`` tells whether a
    model has a connector).

    Attributes:
        connector: ``Linear(d_s, D)``.
        classifier: ``Linear(D, C)``.
        body_feature_dim: ``d_s``, the trunk's own feature size.
    """

    connector: nn.Linear
    body_feature_dim: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.connector(super().forward_features(x))


@functools.cache
def connected_class(cls: type[kdcore.KDModel]) -> type[ConnectedModel]:
    """The class of a ``cls`` model with a connector (one per architecture class)."""
    return type(f"Connected{cls.__name__}", (ConnectedModel, cls),
                {"__module__": __name__, "__doc__": f"{cls.__name__} with an LSH connector."})


def connector_seed(seed: int, role: str) -> int:
    """The seed of a role's connector initialisation: fixed by the run seed and the role."""
    return (seed * 1_000_003 + zlib.crc32(f"kdcore-lsh/connector/{role}".encode())) % (2**63)


class _HasModels(Protocol):
    """What :func:`attach_connector` needs of the run: a component context is one."""

    @property
    def models(self) -> Mapping[str, Any]: ...

    @property
    def recipe(self) -> Any: ...


def attach_connector(ctx: _HasModels, role: str, feature_dim: int, *, force: bool = False,
                     owner: str = "lsh") -> bool:
    """Give model ``role`` a connector to ``feature_dim`` if its feature size differs.

    The model is changed in place (see the module docstring). Idempotent: a model that already
    has a connector of that size is left alone (several mimicking components, or several
    stages, may serve one student). The new layers are initialised under a seed derived from
    the run's seed and the role, without touching torch's global random stream, so a fresh run
    and a resumed one build identical modules.

    Args:
        ctx: the run's context (``ctx.models`` built, ``ctx.recipe.run.seed``).
        role: the student's role.
        feature_dim: ``D``.
        force: add a connector even when the sizes agree (``force_connector``).
        owner: the component's label, for error messages.

    Returns:
        Whether a connector was added now.
    """
    model = ctx.models[role]
    if isinstance(model, ConnectedModel):
        if model.feature_dim != feature_dim:
            raise kdcore.RecipeError(
                f"component '{owner}': model '{role}' already has a connector to "
                f"{model.feature_dim} features, but this teacher's features have {feature_dim}")
        return False
    if not force and model.feature_dim == feature_dim:
        return False
    body_dim = int(model.feature_dim)
    num_classes = int(model.classifier.out_features)
    old = model.classifier.weight
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(connector_seed(ctx.recipe.run.seed, role))
        connector = nn.Linear(body_dim, feature_dim)
        classifier = nn.Linear(feature_dim, num_classes)
    model.__class__ = connected_class(type(model))
    model.body_feature_dim = body_dim
    # the old classifier is replaced, so no dead parameters reach the optimiser or checkpoints
    model.connector = connector.to(device=old.device, dtype=old.dtype)
    model.classifier = classifier.to(device=old.device, dtype=old.dtype)
    return True


__all__ = ["ConnectedModel", "attach_connector", "connected_class", "connector_seed"]
