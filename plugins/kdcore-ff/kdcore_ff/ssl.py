"""Self-supervised pre-training of the backbone: SimCLR's NT-Xent on two augmented views.

F&F name self-supervised learning as one of their "friends" (spec ``methods/ff.md`` §6.5, item
1); which method and schedule they use is unknown. The placeholder here is SimCLR (Chen et al.
2020) as in C2D (WACV 2022): a projection head on the penultimate feature, two random views of
every image, and the normalised-temperature cross-entropy between them. It is a *transfer*
component, placed in a stage of its own that trains the student without labels.
"""

from __future__ import annotations

import zlib
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

import kdcore
from kdcore.device import check_fits
from kdcore.validators import (
    all_of,
    below_one,
    finite_float32,
    finite_non_negative,
    non_negative,
    positive,
    softmax_temperature,
)

HEAD = "ssl_head"
"""The attribute under which the projection head is added to a model (``model.ssl_head``)."""


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss, per sample.

    The ``2B`` projections are L2-normalised; anchor ``i`` scores every other projection by
    cosine similarity over ``temperature``, and its loss is the cross-entropy of picking its
    own other view among the ``2B - 1``:
    ``l_i = -log(exp(s_ip / t) / sum_{k != i} exp(s_ik / t))``.

    Args:
        z1, z2: ``(B, d)`` projections of the first and second view of the same B samples.
        temperature: t.

    Returns:
        ``(B,)``: the mean of each sample's two anchor losses, so the batch mean is SimCLR's
        loss over all ``2B`` anchors.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    positive = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    per_anchor = F.cross_entropy(sim, positive, reduction="none")
    return 0.5 * (per_anchor[:b] + per_anchor[b:])


def feature_view(x: torch.Tensor, generator: torch.Generator, *, noise_std: float,
                 drop_prob: float) -> torch.Tensor:
    """One random view by feature augmentation: Gaussian noise, then masking.

    Every entry gets ``N(0, noise_std^2)`` noise, then is set to 0 with probability
    ``drop_prob`` (masking without rescaling; on normalised inputs 0 is the mean). Works on
    flat vectors and images alike. Draws come from ``generator`` (on its device) and move.
    """
    dev = generator.device
    out = x
    if noise_std > 0:
        noise = torch.randn(x.shape, generator=generator, device=dev).to(x.device)
        out = out + noise_std * noise
    if drop_prob > 0:
        keep = torch.rand(x.shape, generator=generator, device=dev).to(x.device) >= drop_prob
        out = out * keep
    return out


@attrs.frozen
class SSLParams:
    """Parameters of ``ssl_pretrain``.

    Attributes:
        temperature: NT-Xent's temperature.
        projection_dim: the projection head's output size.
        projection_hidden: its hidden width (0: the model's feature size).
        noise_std: Gaussian noise added to every input entry of a view; a float32 number
            (``1e300`` made every view infinite at the first step).
        drop_prob: the probability that an entry of a view is masked to 0.
        crop_padding: image inputs only: a random crop after this much zero padding
            (kdcore's ``crop_flip`` augmentation, at most 64 pixels); 0: no crop.
        flip: image inputs only: mirror half of the views (off for digits and text-like data).
        recipe_augment: apply the recipe's ``data.augment`` chain to each view first.
    """

    temperature: float = attrs.field(default=0.5, validator=softmax_temperature)
    projection_dim: int = attrs.field(default=64, validator=positive)
    projection_hidden: int = attrs.field(default=0, validator=non_negative)
    noise_std: float = attrs.field(default=0.1,
                                   validator=all_of(finite_non_negative, finite_float32))
    drop_prob: float = attrs.field(default=0.2, validator=below_one)
    crop_padding: int = attrs.field(default=2, validator=non_negative)
    flip: bool = False
    recipe_augment: bool = True


def make_head(feature_dim: int, hidden: int, out: int) -> nn.Module:
    """SimCLR's projection head: ``Linear -> ReLU -> Linear``."""
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def head_seed(seed: int, role: str) -> int:
    """The head's initialisation seed, from the run's seed and the role (order-independent)."""
    return (seed * 1_000_003 + zlib.crc32(f"{role}/{HEAD}".encode())) % (2**63)


class SSLPretrain(kdcore.Component):
    """SimCLR pre-training of the served models' backbones, without labels."""

    Params = SSLParams
    model_attributes = ("feature_dim",)
    description = "self-supervised pre-training: SimCLR NT-Xent on two augmented views"

    def adapt_models(self, ctx: kdcore.RunContext) -> None:
        p = self.params
        for role in self.models:
            model = ctx.models[role]  # changed in place: the mapping itself is read-only
            dim = model.feature_dim
            hidden = p.projection_hidden or dim
            head = getattr(model, HEAD, None)
            if head is None:
                size = 4 * ((dim + 1) * hidden + (hidden + 1) * p.projection_dim)
                check_fits(f"component '{self.name}': the projection head of '{role}' ({dim} x "
                           f"{hidden} x {p.projection_dim})", size, ctx.device,
                           "lower projection_hidden or projection_dim")
                with torch.random.fork_rng(devices=[]):  # CPU init, global stream untouched
                    torch.default_generator.manual_seed(head_seed(ctx.recipe.run.seed, role))
                    head = make_head(dim, hidden, p.projection_dim)
                device = next(model.parameters()).device
                model.add_module(HEAD, head.to(device))
                continue
            shape = (head[0].in_features, head[0].out_features, head[2].out_features)
            if shape != (dim, hidden, p.projection_dim):
                raise kdcore.RecipeError(
                    f"component '{self.name}': model '{role}' already has a projection head "
                    f"{shape} from another ssl_pretrain entry; give both the same "
                    "projection_hidden and projection_dim")

    def setup(self, ctx: kdcore.RunContext) -> None:
        for role in self.models:  # every component's adapt_models has run, in recipe order
            model = ctx.models[role]
            head = getattr(model, HEAD, None)  # None: a harness that skipped adapt_models
            built = model.feature_dim if head is None else head[0].in_features
            if built != model.feature_dim:
                raise kdcore.RecipeError(
                    f"component '{self.name}': model '{role}' has {model.feature_dim} features, "
                    f"but its projection head was built for {built}: a component after this one "
                    "in the recipe changed the model's features (an LSH connector, say); give "
                    f"'{role}' the feature size that component needs, so that nothing changes, "
                    "or put that component's stage first")
        self.crop: Any = None
        p = self.params
        if ctx.data.train.x.dim() == 4 and (p.crop_padding or p.flip):
            # the run's registries (in-process plugins included)
            self.crop = kdcore.active_host().augmentations.get("crop_flip")
            # a padding crop_flip refuses stops `kdcore check`, not the stage's first batch
            one = ctx.data.inputs(ctx.data.train, torch.arange(1, device=ctx.device))
            try:
                self.crop(one, torch.Generator(device=one.device), padding=p.crop_padding,
                          flip=p.flip)
            except kdcore.KdcoreError as exc:
                raise kdcore.RecipeError(f"component '{self.name}': crop_padding: {exc}"
                                         ) from None

    def view(self, ctx: kdcore.RunContext, x: torch.Tensor) -> torch.Tensor:
        """One random view of the inputs ``x`` (draws from the component's own generator,
        ``ctx.generator``, checkpointed with the run)."""
        p, gen = self.params, ctx.generator
        if p.recipe_augment:
            x = ctx.augment(x, gen)
        if self.crop is not None:
            x = self.crop(x, gen, padding=p.crop_padding, flip=p.flip)
        return feature_view(x, gen, noise_std=p.noise_std, drop_prob=p.drop_prob)

    def transfer(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> kdcore.PerSample:
        data = ctx.data
        x = data.inputs(data.train, batch.index)  # un-augmented: each view draws its own
        views = torch.cat([self.view(ctx, x), self.view(ctx, x)])
        b = len(batch)
        out = {}
        for role in self.models:
            z = getattr(ctx.models[role], HEAD)(batch.forward(role, views).features)
            out[role] = nt_xent(z[:b], z[b:], self.params.temperature)
        return out
