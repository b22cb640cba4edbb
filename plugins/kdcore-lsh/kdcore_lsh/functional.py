"""The LSH feature-mimicking maths as plain functions (no engine, no state).

Notation of the specification (``methods/lsh.md``): teacher features ``f_t`` and student
features ``f_s`` of size ``D``; a frozen random projection ``u(f) = W f + b`` with ``W``
``(N, D)`` and ``b`` ``(N,)`` (``N`` hash functions). Every loss is per sample, shape ``(B,)``;
the engine reduces them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Elements of one (hash functions x samples) block in the bias pass: 2**24 float32 = 64 MiB.
BIAS_BLOCK_ELEMENTS = 2**24


def draw_projection(num_hashes: int, dim: int, sigma: float,
                    generator: torch.Generator) -> torch.Tensor:
    """``W`` ``(num_hashes, dim)`` with entries drawn from ``N(0, sigma^2)`` by ``generator``."""
    return torch.randn(num_hashes, dim, generator=generator) * sigma


def project(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``u(f) = W f + b`` for a batch ``(B, D)`` -> ``(B, N)``."""
    return F.linear(features, weight, bias)


def hash_bits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The hash bits ``1[u(f) > 0]`` as a bool ``(B, N)`` tensor."""
    return project(features, weight, bias) > 0


def l2_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``||f_s - f_t||^2 / D`` per sample: the batch mean is ``mse_loss(..., "mean")``."""
    return (student - teacher.detach()).pow(2).mean(dim=1)


def lsh_loss(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the student's projections on the teacher's hash bits.

    ``-(1/N) sum_j [y_j log s(u_j(f_s)) + (1 - y_j) log(1 - s(u_j(f_s)))]`` per sample, with
    ``y = 1[u(f_t) > 0]``; the batch mean is ``binary_cross_entropy_with_logits(..., "mean")``.
    """
    bits = hash_bits(teacher.detach(), weight, bias).to(student.dtype)
    logits = project(student, weight, bias)
    return F.binary_cross_entropy_with_logits(logits, bits, reduction="none").mean(dim=1)


def teacher_correct(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``argmax(teacher) == label`` per sample; ``labels`` are class ids ``(B,)`` or soft
    targets ``(B, C)`` (their argmax is the label)."""
    if labels.dim() == 2:
        labels = labels.argmax(dim=1)
    return teacher_logits.argmax(dim=1) == labels.to(teacher_logits.device)


def mean_bias(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``b = -mean_x W f(x)``: every projection is centred on the given features."""
    return -(features.mean(dim=0) @ weight.t())


def median_bias(features: torch.Tensor, weight: torch.Tensor,
                block_elements: int = BIAS_BLOCK_ELEMENTS) -> torch.Tensor:
    """``b_j = -median_x (W f(x))_j`` over the rows of ``features`` ``(n, D)``.

    The median is the midpoint of the two central order statistics that separate the
    ``floor(n / 2)`` largest projections from the rest: numpy's median for even ``n``, and for odd
    ``n`` the midpoint between the middle value and the next one up. Every hash bit is then 1
    for exactly ``floor(n / 2)`` of the samples (for distinct projections), and a threshold that
    lies between two samples is robust to the round-off of recomputing ``W f`` in another batch
    shape. Computed in blocks of hash functions so that ``n x N`` is never held at once.
    """
    n = int(features.shape[0])
    num_hashes = int(weight.shape[0])
    if n == 0:
        return torch.zeros(num_hashes, dtype=weight.dtype, device=weight.device)
    above = n // 2
    step = max(1, block_elements // n)
    out = []
    for start in range(0, num_hashes, step):
        proj = weight[start:start + step] @ features.t()  # (hashes, n), rows contiguous
        if above == 0:  # one sample: put it on the 0 side
            out.append(-proj[:, 0] - 1.0)
            continue
        low = proj.kthvalue(n - above, dim=1).values
        high = proj.kthvalue(n - above + 1, dim=1).values
        out.append(-(low + high) / 2)
    return torch.cat(out)


__all__ = [
    "draw_projection", "hash_bits", "l2_loss", "lsh_loss", "mean_bias", "median_bias", "project",
    "teacher_correct",
]
