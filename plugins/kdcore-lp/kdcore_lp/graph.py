"""The kNN affinity graph of label propagation, never as an N x N dense matrix.

Iscen et al. (CVPR 2019) and AML-KD: k nearest neighbours by inner product (cosine on
L2-normalised features), affinity ``max(s, 0)^gamma``, symmetrised ``W = A + A^T`` with a zero
diagonal, then ``D^-1/2 W D^-1/2`` (a zero degree counts as 1). Search is exact by chunks of
rows (memory ``chunk x N``, linear in N); faiss is an optional backend for very large N.

Negative similarities (our reading, a reconstruction choice): the released code raises the
*signed* similarity to ``gamma = 3``, so a sample whose k nearest similarities are all negative
gets a negative degree and ``D^-1/2`` spreads NaN to every row. We clamp the similarity at 0
before the power: ``A_ij = max(s_ij, 0)^gamma``. Where features are non-negative (after a ReLU,
as the release's networks' penultimate features are) no similarity is negative and the graph is
the release's exactly. A sample with no positive similarity has an all-zero row and column: its
degree counts as 1 (no division by zero) and it is isolated, so propagation leaves it its own
seed (``Z_i = Y_i``).

Non-finite features would make every score NaN and every label class 0 without a word, so
:func:`feature_graph` refuses them (:class:`NonFiniteFeatures`).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F

Backend = Literal["exact", "faiss"]


class NonFiniteFeatures(ValueError):
    """Features holding NaN or infinity: no graph can be built from them.

    Attributes:
        bad: the number of samples (rows) with a non-finite value.
        total: the number of samples.
    """

    def __init__(self, bad: int, total: int):
        self.bad = bad
        self.total = total
        super().__init__(f"features are not finite ({bad} of {total} samples)")


def check_finite(features: torch.Tensor) -> None:
    """Raise :class:`NonFiniteFeatures` when a row of ``features`` holds NaN or infinity (one
    reduction over the features; the count only on failure)."""
    finite = torch.isfinite(features)
    if not bool(finite.all()):
        bad = int((~finite.reshape(len(features), -1).all(1)).sum())
        raise NonFiniteFeatures(bad, len(features))


def knn(features: torch.Tensor, k: int, *, chunk: int = 1024, backend: Backend = "exact"
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest neighbours of every row by inner product, the row itself excluded.

    Args:
        features: ``(N, d)``; normalise them first for cosine similarity.
        k: neighbours per row (``k < N``).
        chunk: rows per block of the exact search.
        backend: ``exact`` (chunked matrix products and top-k, on the features' device) or
            ``faiss`` (``IndexFlatIP``; CPU, needs the ``faiss`` extra).

    Returns:
        ``(indices, similarities)``, both ``(N, k)``, most similar first.
    """
    n = features.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1}, got {k}")
    if backend == "faiss":
        return _knn_faiss(features, k)
    feats = features.float()
    idx_out = torch.empty(n, k, dtype=torch.long, device=feats.device)
    sim_out = torch.empty(n, k, dtype=feats.dtype, device=feats.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = feats[start:stop] @ feats.T
        rows = torch.arange(stop - start, device=feats.device)
        sims[rows, rows + start] = float("-inf")  # a sample is not its own neighbour
        top = sims.topk(k, dim=1)
        idx_out[start:stop] = top.indices
        sim_out[start:stop] = top.values
    return idx_out, sim_out


def _knn_faiss(features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ImportError as exc:
        import kdcore

        raise kdcore.KdcoreError(
            "knn backend 'faiss' needs faiss: pip install 'kdcore-lp[faiss]'") from exc
    x = features.detach().float().cpu().contiguous().numpy()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(x, k + 1)
    idx_t = torch.from_numpy(idx)
    sims_t = torch.from_numpy(sims)
    # drop the row itself wherever it appears (with duplicates it need not come first)
    rows = torch.arange(len(idx_t)).unsqueeze(1)
    keep = idx_t != rows
    first_k = keep.cumsum(1) <= k
    sel = keep & first_k
    out_idx = idx_t[sel].view(-1, k)
    out_sim = sims_t[sel].view(-1, k)
    return out_idx.to(features.device), out_sim.to(features.device)


def normalized_affinity(indices: torch.Tensor, sims: torch.Tensor, gamma: float = 3.0
                        ) -> torch.Tensor:
    """``D^-1/2 (A + A^T) D^-1/2`` as a sparse CSR tensor, ``A_ij = max(s_ij, 0)^gamma`` on
    the kNN.

    Negative similarities are clamped at 0 before the power (our reading; the released code
    powers the signed similarity, which gives negative degrees and NaN when a sample's
    neighbours are all dissimilar): every affinity and degree is >= 0, and a row whose degree
    is 0 (no positive neighbour, and nobody's positive neighbour) gets degree 1, so it is an
    isolated node that keeps its own seed.
    """
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    cols = indices.reshape(-1)
    vals = sims.reshape(-1).double().clamp_min(0.0).pow(gamma)
    # A + A^T: coalescing sums the entries where i->j and j->i are both kNN edges
    both_r = torch.cat([rows, cols])
    both_c = torch.cat([cols, rows])
    both_v = torch.cat([vals, vals])
    off_diag = both_r != both_c
    w = torch.sparse_coo_tensor(torch.stack([both_r[off_diag], both_c[off_diag]]),
                                both_v[off_diag], (n, n), check_invariants=False).coalesce()
    degree = torch.zeros(n, dtype=torch.float64, device=indices.device)
    degree.index_add_(0, w.indices()[0], w.values())
    degree[degree == 0] = 1.0
    inv_sqrt = degree.rsqrt()
    r, c = w.indices()
    norm_vals = w.values() * inv_sqrt[r] * inv_sqrt[c]
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we need
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(w.indices(), norm_vals, (n, n)).coalesce().to_sparse_csr()


def feature_graph(features: torch.Tensor, *, k: int, gamma: float = 3.0, normalize: bool = True,
                  chunk: int = 1024, backend: Backend = "exact") -> torch.Tensor:
    """The normalised affinity of ``features`` (see the module docstring).

    Raises:
        NonFiniteFeatures: a feature is NaN or infinite.
    """
    check_finite(features)
    feats = F.normalize(features.float(), dim=1) if normalize else features.float()
    idx, sims = knn(feats, k, chunk=chunk, backend=backend)
    return normalized_affinity(idx, sims, gamma)
