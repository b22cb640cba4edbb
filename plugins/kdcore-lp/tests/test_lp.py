"""Label propagation: graph, solver and read-out against dense references and toy problems."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcore_lp.graph import feature_graph, knn
from kdcore_lp.propagation import class_balanced_seeds, propagate, propagate_features
from kdcore_lp.solve import conjugate_gradient


def _blobs(n_per=100, d=8, sep=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    # two directions, so that the clusters are apart in cosine similarity too
    centres = torch.zeros(2, d)
    centres[0, 0] = sep
    centres[1, 1] = sep
    x = torch.cat([centres[c] + torch.randn(n_per, d, generator=g) for c in (0, 1)])
    y = torch.arange(2).repeat_interleave(n_per)
    return x, y


def _dense_affinity(feats, k, gamma):
    """The same graph built the obvious dense way, for small N."""
    sims = feats @ feats.T
    n = len(feats)
    a = torch.zeros(n, n, dtype=torch.float64)
    s = sims.clone()
    s.fill_diagonal_(float("-inf"))
    idx = s.topk(k, dim=1).indices
    for i in range(n):
        a[i, idx[i]] = sims[i, idx[i]].double() ** gamma
    w = a + a.T
    w.fill_diagonal_(0)
    d = w.sum(1)
    d[d == 0] = 1
    return w / d.sqrt()[:, None] / d.sqrt()[None, :]


def test_knn_excludes_self_and_matches_brute_force():
    x = F.normalize(torch.randn(60, 5, generator=torch.Generator().manual_seed(1)))
    idx, sims = knn(x, 4, chunk=16)
    full = x @ x.T
    full.fill_diagonal_(float("-inf"))
    ref = full.topk(4, dim=1)
    assert torch.equal(idx, ref.indices)
    assert torch.allclose(sims, ref.values)
    assert not (idx == torch.arange(60)[:, None]).any()


def test_normalized_affinity_matches_dense_construction():
    x = F.normalize(torch.randn(40, 6, generator=torch.Generator().manual_seed(2)))
    w = feature_graph(x, k=5, gamma=3.0, normalize=False, chunk=7).to_dense()
    assert torch.allclose(w, _dense_affinity(x, 5, 3.0), atol=1e-12)
    assert torch.allclose(w, w.T)


def test_cg_matches_dense_solve():
    x, _ = _blobs(n_per=30)
    w = feature_graph(x, k=6)
    y = class_balanced_seeds(torch.randint(0, 3, (60,), generator=torch.Generator()
                                           .manual_seed(3)), 3)
    z = conjugate_gradient(w, y, alpha=0.9, tol=1e-12, maxiter=500)
    dense = torch.linalg.solve(torch.eye(60, dtype=torch.float64) - 0.9 * w.to_dense(), y)
    assert torch.allclose(z, dense, atol=1e-9)


def test_cg_with_the_aml_kd_cap_approximates_the_closed_form():
    x, _ = _blobs(n_per=40)
    w = feature_graph(x, k=10)
    y = class_balanced_seeds(torch.arange(80) % 2, 2)
    z20 = conjugate_gradient(w, y, alpha=0.99, maxiter=20)
    dense = torch.linalg.solve(torch.eye(80, dtype=torch.float64) - 0.99 * w.to_dense(), y)
    # 20 iterations do not converge at alpha = 0.99, but they do rank classes the same way
    assert (z20.argmax(1) == dense.argmax(1)).float().mean() > 0.9


def test_two_clusters_with_30_percent_flipped_seeds_are_recovered():
    x, y = _blobs(n_per=100, sep=5.0)
    g = torch.Generator().manual_seed(4)
    flip = torch.randperm(200, generator=g)[:60]
    seeds = y.clone()
    seeds[flip] = 1 - seeds[flip]
    out = propagate_features(x, seeds, 2, k=10)
    assert (out.labels == y).float().mean() >= 0.99
    assert (seeds == y).float().mean() == pytest.approx(0.7)


def test_seeds_are_class_balanced_and_scale_free():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    w = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 3.0])
    y = class_balanced_seeds(labels, 4, w)
    assert torch.allclose(y.sum(0), torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(y, class_balanced_seeds(labels, 4, 7 * w))


def test_clamp_and_confidence_readout():
    x, y = _blobs(n_per=20)
    w = feature_graph(x, k=5)
    out = propagate(w, y, 2, clamp=True)
    assert (out.scores >= 0).all()
    probs = torch.softmax(out.scores.double(), 1)
    assert torch.allclose(out.confidence.double(), probs.max(1).values, atol=1e-6)


def test_faiss_backend_agrees_with_exact():
    pytest.importorskip("faiss")
    x = torch.nn.functional.normalize(torch.randn(200, 16, generator=torch.Generator()
                                                  .manual_seed(5)))
    a_idx, a_sim = knn(x, 7)
    b_idx, b_sim = knn(x, 7, backend="faiss")
    assert torch.allclose(a_sim, b_sim, atol=1e-5)
    assert (a_idx == b_idx).float().mean() > 0.99  # ties may order differently


def test_graph_memory_is_linear_in_n():
    """The graph holds at most 2k entries per row: no N x N matrix anywhere."""
    for n in (100, 400):
        x, _ = _blobs(n_per=n // 2)
        w = feature_graph(x, k=5, chunk=32)
        assert w.values().numel() <= 2 * 5 * n
        assert np.isfinite(w.values().numpy()).all()


def test_the_automatic_tile_fits_its_budget_and_tiles_give_the_same_neighbours():
    from kdcore_lp.graph import BLOCK_BYTES, auto_chunk

    assert auto_chunk(60_000) == 4096 and 4096 * 4096 * 4 == BLOCK_BYTES
    assert auto_chunk(10) == 10 and auto_chunk(1) == 1
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(9))
    full = x @ x.T
    full.fill_diagonal_(float("-inf"))
    ref = full.topk(5, dim=1)
    # one tile; tiles smaller than k (merged across many); a ragged last tile
    for chunk in (0, 3, 7, 64):
        idx, sims = knn(x, 5, chunk=chunk)
        assert idx.dtype == torch.long and sims.dtype == torch.float32
        assert torch.equal(idx, ref.indices), chunk
        assert torch.allclose(sims, ref.values, atol=1e-6), chunk


def test_cosine_search_scales_blocks_like_normalised_features():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(120, 6, generator=g) * torch.rand(120, 1, generator=g) * 10
    x[3] = 0.0  # a zero row: F.normalize leaves it zero, and so does the scaling
    a_idx, a_sim = knn(x, 6, cosine=True, chunk=17)
    ref = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
    ref.fill_diagonal_(float("-inf"))
    top = ref.topk(6, dim=1)
    assert torch.allclose(a_sim, top.values, atol=1e-6)
    assert (a_idx == top.indices).float().mean() > 0.98  # the zero row's ties may reorder


def test_ivf_backend_finds_most_exact_neighbours_and_never_an_invalid_one():
    pytest.importorskip("faiss")
    from kdcore_lp.graph import ivf_lists

    assert ivf_lists(1_000_000) == 1000 and ivf_lists(100) == 2 and ivf_lists(5) == 1
    x, _ = _blobs(n_per=1000, d=16)
    x = F.normalize(x, dim=1)
    e_idx, _ = knn(x, 10)
    lists = ivf_lists(len(x))
    f_idx, f_sim = knn(x, 10, backend="faiss_ivf", nprobe=lists)  # every list: exact
    assert (f_idx == e_idx).float().mean() > 0.99
    def recall(nprobe):
        a_idx, _ = knn(x, 10, backend="faiss_ivf", nprobe=nprobe)
        assert (a_idx >= 0).all() and (a_idx < len(x)).all()
        return np.mean([len(set(a.tolist()) & set(e.tolist())) / 10
                        for a, e in zip(a_idx, e_idx)])

    # Gaussian blobs in 16 dimensions are a hard case for inverted lists
    assert 0.6 < recall(4) < recall(16) <= 1.0


def test_ivf_on_a_few_dozen_samples_is_the_exact_search_without_a_faiss_warning(capfd):
    """With one inverted list, faiss trained k-means on fewer than 39 points and printed
    "WARNING clustering 25 points to 1 centroids" on stderr, once per LP."""
    pytest.importorskip("faiss")
    x = torch.randn(25, 6, generator=torch.Generator().manual_seed(1))
    idx, sims = knn(x, 5, backend="faiss_ivf", nprobe=8)
    e_idx, e_sim = knn(x, 5, backend="faiss")
    assert torch.equal(idx, e_idx) and torch.equal(sims, e_sim)
    assert "WARNING" not in capfd.readouterr().err
    knn(torch.randn(80, 6, generator=torch.Generator().manual_seed(2)), 5,
        backend="faiss_ivf", nprobe=1)  # two lists: the inverted index, trained quietly
    assert capfd.readouterr().err == ""


def test_a_faiss_backend_without_faiss_says_how_to_install_it(monkeypatch):
    import sys

    import kdcore

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    for backend in ("faiss", "faiss_ivf"):
        with pytest.raises(kdcore.KdcoreError) as err:
            knn(x, 3, backend=backend, nprobe=1)
        assert str(err.value) == ("knn backend 'faiss' needs faiss: pip install "
                                  "'kdcore-lp[faiss]'")


def test_missing_ivf_neighbours_become_no_edge():
    faiss = pytest.importorskip("faiss")  # noqa: F841 (the backend needs it)
    from kdcore_lp.graph import ivf_lists

    # 80 points in two far-apart groups, two inverted lists: probing one list, a query in
    # the small group of 10 finds only its 9 others, fewer than k = 12
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(70, 4, generator=g) * 0.01 + torch.tensor([1.0, 0, 0, 0]),
                   torch.randn(10, 4, generator=g) * 0.01 + torch.tensor([0, 1.0, 0, 0])])
    assert ivf_lists(80) == 2
    idx, sims = knn(x, 12, backend="faiss_ivf", nprobe=1)
    rows = torch.arange(80)[:, None]
    assert ((idx[70:] == rows[70:]).sum(1) == 3).all()  # 9 real neighbours, 3 missing
    assert set(idx[70:][idx[70:] != rows[70:]].tolist()) <= set(range(70, 80))
    assert (sims[idx == rows] == 0).all()
    w = feature_graph(x, k=12, backend="faiss_ivf", nprobe=1).to_dense()
    assert torch.all(w.diagonal() == 0) and torch.allclose(w, w.T)
    assert torch.isfinite(w).all()


def test_k_must_leave_room_for_the_sample_itself():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    assert knn(x, 1)[0].shape == (10, 1) and knn(x, 9)[0].shape == (10, 9)
    for k in (0, 10, 11):
        with pytest.raises(ValueError, match=r"k must be in 1\.\.9, got " + str(k)):
            knn(x, k)


def test_faiss_backends_search_by_cosine_when_asked():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(150, 8, generator=g) * torch.rand(150, 1, generator=g) * 5
    e_idx, e_sim = knn(x, 5, cosine=True)
    for backend in ("faiss", "faiss_ivf"):
        idx, sims = knn(x, 5, backend=backend, cosine=True, nprobe=1000)
        assert torch.allclose(sims, e_sim, atol=1e-5), backend
        assert (idx == e_idx).float().mean() > 0.99, backend
    # without cosine, the raw inner product: long vectors win
    raw_idx, raw_sim = knn(x, 5, backend="faiss")
    ref = (x @ x.T).fill_diagonal_(float("-inf")).topk(5, dim=1)
    assert torch.allclose(raw_sim, ref.values, atol=1e-4)
    assert not torch.allclose(raw_sim, e_sim, atol=1e-3)


def test_exact_faiss_probes_everything_and_ivf_reports_inner_products():
    pytest.importorskip("faiss")
    from kdcore_lp.graph import ivf_lists

    assert ivf_lists(78) == 2 and ivf_lists(77) == 1
    x, _ = _blobs(n_per=2000, d=16)
    x = F.normalize(x, dim=1)
    assert ivf_lists(len(x)) > 3 * 16  # so an IVF with 16 probes would be approximate
    e_idx, e_sim = knn(x, 10)
    f_idx, f_sim = knn(x, 10, backend="faiss")
    assert (f_idx == e_idx).float().mean() > 0.99
    a_idx, a_sim = knn(x, 10, backend="faiss_ivf", nprobe=4)
    found = a_idx != torch.arange(len(x))[:, None]
    dots = (x[torch.arange(len(x))[:, None].expand_as(a_idx)] * x[a_idx]).sum(-1)
    assert torch.allclose(a_sim[found], dots[found], atol=1e-5)  # similarities, not distances
    assert (a_sim[:, :-1] >= a_sim[:, 1:] - 1e-6).all()


def test_graph_defaults_are_the_documented_ones():
    from kdcore_lp.graph import normalized_affinity

    g = torch.Generator().manual_seed(8)
    x = torch.randn(50, 5, generator=g).relu() * 3
    idx, sims = knn(F.normalize(x, dim=1), 6)
    assert torch.equal(normalized_affinity(idx, sims).to_dense(),
                       normalized_affinity(idx, sims, 3.0).to_dense())
    assert torch.equal(feature_graph(x, k=6).to_dense(),
                       feature_graph(x, k=6, gamma=3.0, normalize=True).to_dense())


def test_an_isolated_last_sample_keeps_the_graph_square():
    # the last sample's neighbours are all dissimilar (clamped to 0): no entry in its row or
    # column, and the graph must still be N x N
    x = torch.tensor([[1.0, 0.1], [0.9, 0.2], [1.0, 0.3], [0.8, 0.1], [-1.0, 0.0]])
    w = feature_graph(x, k=2)
    assert w.shape == (5, 5)
    dense = w.to_dense()
    assert torch.equal(dense[4], torch.zeros(5, dtype=dense.dtype))
    assert torch.equal(dense[:, 4], torch.zeros(5, dtype=dense.dtype))
    # the dense construction with the clamp: A_ij = max(s_ij, 0)^3 on each row's 2 nearest
    u = F.normalize(x, dim=1)
    sims = u @ u.T
    sims.fill_diagonal_(float("-inf"))
    a = torch.zeros(5, 5, dtype=torch.float64)
    for i, row in enumerate(sims.topk(2, dim=1).indices):
        a[i, row] = sims[i, row].double().clamp_min(0) ** 3
    wd = a + a.T
    d = wd.sum(1)
    d[d == 0] = 1
    assert torch.allclose(dense, wd / d.sqrt()[:, None] / d.sqrt()[None, :], atol=1e-12)


def test_non_finite_features_say_how_many():
    from kdcore_lp.graph import NonFiniteFeatures

    x = torch.ones(6, 2)
    x[1, 0] = float("nan")
    x[4, 1] = float("inf")
    with pytest.raises(NonFiniteFeatures, match=r"^features are not finite \(2 of 6 samples\)$"):
        feature_graph(x, k=2)


def test_feature_graph_forwards_gamma_backend_and_probes():
    faiss = pytest.importorskip("faiss")  # noqa: F841 (the backend needs it)
    from kdcore_lp.graph import normalized_affinity

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(70, 4, generator=g) * 0.01 + torch.tensor([1.0, 0, 0, 0]),
                   torch.randn(10, 4, generator=g) * 0.01 + torch.tensor([0, 1.0, 0, 0])])
    idx, sims = knn(x, 12, cosine=True)
    assert torch.allclose(feature_graph(x, k=12, gamma=2.0).to_dense(),
                          normalized_affinity(idx, sims, 2.0).to_dense())
    exact = feature_graph(x, k=12).to_dense()
    probed = feature_graph(x, k=12, backend="faiss_ivf", nprobe=1).to_dense()
    # one list probed of two: the small group's rows miss neighbours the exact graph has
    assert (probed != 0).sum() < (exact != 0).sum()
