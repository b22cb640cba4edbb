"""The student connector ("2FC" of the LSHFM release).

When the student's feature size ``d_s`` differs from the teacher's ``D`` (or a connector is
forced), the student's classifier ``Linear(d_s, C)`` is replaced by a connector
``Linear(d_s, D)`` (with bias, no normalisation or activation) followed by a new classifier
``Linear(D, C)``. The mimicked student feature is the connector's output, so the wrapped model
keeps kdcore's contract: ``forward`` returns ``(logits, features)`` with ``features`` the input
of ``classifier``.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

import kdcore


class ConnectedModel(kdcore.KDModel):
    """A model whose trunk feeds a linear connector, then a new classifier.

    Args:
        body: the original model; only its ``forward_features`` is used, and its old
            classifier is dropped (replaced by ``nn.Identity``) so that no dead parameters
            reach the optimiser or the checkpoints.
        feature_dim: ``D``, the connector's output size (the teacher's feature size).
        num_classes: ``C``.

    Attributes:
        body: the original trunk.
        connector: ``Linear(d_s, D)``.
        classifier: ``Linear(D, C)``.
        body_feature_dim: ``d_s``.
    """

    def __init__(self, body: kdcore.KDModel, feature_dim: int, num_classes: int):
        super().__init__()
        self.body_feature_dim = int(body.feature_dim)
        body.classifier = nn.Identity()  # type: ignore[assignment]
        self.body = body
        self.connector = nn.Linear(self.body_feature_dim, feature_dim)
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.connector(self.body.forward_features(x))


def connector_seed(seed: int, role: str) -> int:
    """The seed of a role's connector initialisation: fixed by the run seed and the role."""
    return (seed * 1_000_003 + zlib.crc32(f"kdcore-lsh/connector/{role}".encode())) % (2**63)


def attach_connector(run: kdcore.Run, role: str, feature_dim: int, *, force: bool = False,
                     owner: str = "lsh") -> bool:
    """Give model ``role`` a connector to ``feature_dim`` if its feature size differs.

    Idempotent: a model that already has a connector of that size is left alone (several
    mimicking components, or several stages, may serve one student). The new layers are
    initialised under a seed derived from the run's seed and the role, without touching torch's
    global random stream, so a fresh run and a resumed one build identical modules.

    Args:
        run: the run, ``run.models`` built.
        role: the student's role.
        feature_dim: ``D``.
        force: add a connector even when the sizes agree (``force_connector``).
        owner: the component's label, for error messages.

    Returns:
        Whether a connector was added now.
    """
    model = run.models[role]
    if isinstance(model, ConnectedModel):
        if model.feature_dim != feature_dim:
            raise kdcore.RecipeError(
                f"component '{owner}': model '{role}' already has a connector to "
                f"{model.feature_dim} features, but this teacher's features have {feature_dim}")
        return False
    if not force and model.feature_dim == feature_dim:
        return False
    num_classes = int(model.classifier.out_features)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(connector_seed(run.recipe.run.seed, role))
        wrapped = ConnectedModel(model, feature_dim, num_classes)
    wrapped.train(model.training)
    run.models[role] = wrapped.to(device)
    return True


__all__ = ["ConnectedModel", "attach_connector", "connector_seed"]
