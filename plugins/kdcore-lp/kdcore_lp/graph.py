"""The kNN affinity graph of label propagation, never as an N x N dense matrix.

Iscen et al. (CVPR 2019) and AML-KD: k nearest neighbours by inner product (cosine on
L2-normalised features), affinity ``max(s, 0)^gamma``, symmetrised ``W = A + A^T`` with a zero
diagonal, then ``D^-1/2 W D^-1/2`` (a zero degree counts as 1). Search is exact, by square
tiles (one square tile of similarities, at most :data:`BLOCK_BYTES`, unless a chunk is given;
memory linear in N, the upper triangle of the symmetric similarity matrix only), its time
quadratic in N; faiss is an optional backend: ``faiss`` exact (``IndexFlatIP``),
``faiss_ivf`` approximate (``IndexIVFFlat``, :func:`ivf_lists` inverted lists of which
``nprobe`` are scanned per query), the one whose time stays practical at a million samples.

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

Backend = Literal["exact", "faiss", "faiss_ivf"]

BLOCK_BYTES = 64 * 2**20
"""The size of one block of similarities in the exact search when no chunk is given: small
enough that the search adds little to the graph's own memory, large enough that each block
is one efficient matrix product."""


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


def auto_chunk(n: int) -> int:
    """Rows (and columns) per tile of the exact search: a square tile of float32 similarities
    fits in :data:`BLOCK_BYTES` (4,096 rows at 64 MiB), and no tile is larger than N."""
    return max(1, min(n, int((BLOCK_BYTES // 4) ** 0.5)))


def knn(features: torch.Tensor, k: int, *, chunk: int = 0, backend: Backend = "exact",
        cosine: bool = False, nprobe: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest neighbours of every row by inner product, the row itself excluded.

    The exact search tiles the similarity matrix ``S = X X^T`` in ``chunk x chunk`` blocks and
    computes only the tiles on and above the diagonal: ``S`` is symmetric, so a tile serves its
    rows and, transposed, its columns, half the multiply-adds of a row-by-row search. Each
    row's best ``k`` so far are merged with every tile's.

    Args:
        features: ``(N, d)``; normalise them first for cosine similarity, or pass ``cosine``.
        k: neighbours per row (``k < N``).
        chunk: rows and columns per tile of the exact search (0: :func:`auto_chunk`).
        cosine: search by cosine similarity, as if the rows were L2-normalised (the exact
            search scales each tile instead of copying the normalised features).
        backend: ``exact`` (tiled matrix products and top-k, on the features' device),
            ``faiss`` (``IndexFlatIP``, exact) or ``faiss_ivf`` (``IndexIVFFlat``,
            approximate); the faiss ones run on the CPU and need the ``faiss`` extra.
        nprobe: the inverted lists ``faiss_ivf`` scans per query (more: closer to exact).

    Returns:
        ``(indices, similarities)``, both ``(N, k)``, most similar first.
    """
    n = features.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1}, got {k}")
    if backend in ("faiss", "faiss_ivf"):
        return _knn_faiss(F.normalize(features.float(), dim=1) if cosine else features, k,
                          nprobe=nprobe if backend == "faiss_ivf" else 0)
    feats = features.float()
    device = feats.device
    # F.normalize's x / max(||x||, 1e-12), applied to each tile's rows and columns
    inv = feats.norm(dim=1).clamp_min(1e-12).reciprocal() if cosine else None
    tile = chunk or auto_chunk(n)
    best_sim = torch.full((n, k), float("-inf"), dtype=feats.dtype, device=device)
    best_idx = torch.zeros(n, k, dtype=torch.long, device=device)

    def merge(rows: slice, sims: torch.Tensor, col0: int) -> None:
        """Fold a tile's similarities of ``rows`` (columns from ``col0``) into their best k."""
        top = sims.topk(min(k, sims.shape[1]), dim=1)
        values = torch.cat([best_sim[rows], top.values], dim=1)
        index = torch.cat([best_idx[rows], top.indices + col0], dim=1)
        keep = values.topk(k, dim=1)
        best_sim[rows] = keep.values
        best_idx[rows] = index.gather(1, keep.indices)

    def merge_columns(cols: slice, sims: torch.Tensor, row0: int) -> None:
        """Fold a tile into the best k of its columns' samples. A top-k down the columns of a
        row-major tile reads it across the grain (several times a row-wise top-k); once every
        column has k neighbours, only the entries above a column's k-th best can enter, and
        after the first tiles those are few: they are found in one row-wise pass and merged."""
        floor = best_sim[cols, -1]
        if bool(torch.isneginf(floor).any()):  # some column has fewer than k so far
            merge(cols, sims.T, row0)
            return
        mask = above[:sims.numel()].view(sims.shape)
        torch.gt(sims, floor, out=mask)
        r, c = mask.nonzero(as_tuple=True)
        if r.numel() == 0:
            return
        width = sims.shape[1]
        if r.numel() > width * k:  # dense enough that the full top-k costs less
            merge(cols, sims.T, row0)
            return
        values = sims[r, c]
        # grouped by column, best first within a column (two stable sorts)
        order = values.sort(descending=True, stable=True).indices
        r, c, values = r[order], c[order], values[order]
        order = c.sort(stable=True).indices
        r, c, values = r[order], c[order], values[order]
        counts = torch.bincount(c, minlength=width)
        pos = torch.arange(len(c), device=device) - (counts.cumsum(0) - counts)[c]
        first = pos < k
        touched = (counts > 0).nonzero().squeeze(1)
        slot = torch.zeros(width, dtype=torch.long, device=device)
        slot[touched] = torch.arange(len(touched), device=device)
        cand_sim = torch.full((len(touched), k), float("-inf"), dtype=sims.dtype, device=device)
        cand_idx = torch.zeros(len(touched), k, dtype=torch.long, device=device)
        cand_sim[slot[c[first]], pos[first]] = values[first]
        cand_idx[slot[c[first]], pos[first]] = r[first] + row0
        targets = touched + cols.start
        merged = torch.cat([best_sim[targets], cand_sim], dim=1)
        index = torch.cat([best_idx[targets], cand_idx], dim=1)
        keep = merged.topk(k, dim=1)
        best_sim[targets] = keep.values
        best_idx[targets] = index.gather(1, keep.indices)

    def block(at: slice) -> torch.Tensor:  # the rows of a tile, scaled: a small copy
        return feats[at] if inv is None else feats[at] * inv[at, None]

    buffer = torch.empty(min(tile, n) ** 2, dtype=feats.dtype, device=device)
    above = torch.empty(min(tile, n) ** 2, dtype=torch.bool, device=device)
    for i in range(0, n, tile):
        rows = slice(i, min(i + tile, n))
        left = block(rows)
        for j in range(i, n, tile):
            cols = slice(j, min(j + tile, n))
            right = left if i == j else block(cols)
            # into one reused buffer: a fresh 64 MiB tensor per tile costs its page faults
            sims = buffer[:len(left) * len(right)].view(len(left), len(right))
            torch.mm(left, right.T, out=sims)
            if i == j:  # a sample is not its own neighbour
                sims.fill_diagonal_(float("-inf"))
            merge(rows, sims, j)
            if i != j:
                merge_columns(cols, sims, i)
    return best_idx, best_sim


def ivf_lists(n: int) -> int:
    """The inverted lists of ``faiss_ivf``: ``sqrt(N)`` (each query then scans about
    ``nprobe / sqrt(N)`` of the data), at most ``N / 39`` so that k-means has at least 39
    points per list (faiss's minimum); one list (``N`` under 78) means an exact search."""
    return max(1, min(int(n ** 0.5), n // 39))


def _knn_faiss(features: torch.Tensor, k: int, *, nprobe: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ImportError as exc:
        import kdcore

        raise kdcore.KdcoreError(
            "knn backend 'faiss' needs faiss: pip install 'kdcore-lp[faiss]'") from exc
    x = features.detach().float().cpu().contiguous().numpy()
    lists = ivf_lists(len(x))
    # one inverted list is the flat search, less its k-means (which faiss warns about on
    # stderr below 39 points): a few dozen samples search exactly
    if nprobe and lists > 1:
        quantizer = faiss.IndexFlatIP(x.shape[1])
        index = faiss.IndexIVFFlat(quantizer, x.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        # k-means on an evenly spaced sample of about 64 points per list: deterministic
        index.train(x[::max(1, len(x) // (64 * lists))])
        index.nprobe = min(nprobe, lists)
    else:
        index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(x, k + 1)
    idx_t = torch.from_numpy(idx)
    sims_t = torch.from_numpy(sims)
    n = len(idx_t)
    rows = torch.arange(n).unsqueeze(1)
    # drop the row itself wherever it appears (with duplicates it need not come first) and
    # the -1 an approximate search returns when its probed lists hold fewer than k + 1
    valid = (idx_t != rows) & (idx_t >= 0)
    pos = valid.cumsum(1) - 1
    sel = valid & (pos < k)
    # a missing neighbour stays the row itself with similarity 0: no edge (the diagonal is
    # dropped from the graph)
    out_idx = rows.expand(n, k).clone()
    out_sim = torch.zeros(n, k, dtype=sims_t.dtype)
    at = rows.expand_as(idx_t)[sel]
    out_idx[at, pos[sel]] = idx_t[sel]
    out_sim[at, pos[sel]] = sims_t[sel]
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
    device = indices.device
    rows = torch.arange(n, device=device).repeat_interleave(k)
    cols = indices.reshape(-1)
    vals = sims.reshape(-1).double().clamp_min(0.0).pow(gamma)
    # A + A^T with a zero diagonal: coalescing sums the entries where i->j and j->i are both
    # kNN edges; the intermediates are freed as soon as the next one exists (peak memory)
    keep = rows != cols
    both_r = torch.cat([rows[keep], cols[keep]])
    both_c = torch.cat([cols[keep], rows[keep]])
    both_v = torch.cat([vals[keep], vals[keep]])
    del rows, cols, vals, keep
    w = torch.sparse_coo_tensor(torch.stack([both_r, both_c]), both_v, (n, n),
                                check_invariants=False).coalesce()
    del both_r, both_c, both_v
    r, c = w.indices()
    values = w.values()
    degree = torch.zeros(n, dtype=torch.float64, device=device)
    degree.index_add_(0, r, values)
    degree[degree == 0] = 1.0
    inv_sqrt = degree.rsqrt_()
    values = values * inv_sqrt[r] * inv_sqrt[c]
    # coalesced COO is sorted by row: its row pointers are the cumulative row counts
    crow = torch.zeros(n + 1, dtype=torch.long, device=device)
    crow[1:] = torch.bincount(r, minlength=n).cumsum(0)
    col = c.clone()
    del w, r, c
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we need
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, (n, n))


def feature_graph(features: torch.Tensor, *, k: int, gamma: float = 3.0, normalize: bool = True,
                  chunk: int = 0, backend: Backend = "exact", nprobe: int = 16
                  ) -> torch.Tensor:
    """The normalised affinity of ``features`` (see the module docstring).

    Raises:
        NonFiniteFeatures: a feature is NaN or infinite.
    """
    check_finite(features)
    idx, sims = knn(features, k, chunk=chunk, backend=backend, cosine=normalize, nprobe=nprobe)
    return normalized_affinity(idx, sims, gamma)
