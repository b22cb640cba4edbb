"""Label propagation at a million samples: kdcore-lp on synthetic 128-d features, within memory.

The features: N points on the unit sphere in 128 dimensions, C = 10 classes, each class a
mixture of 20 directions (so that a class is not one blob), every point its direction plus
Gaussian noise; seeds are the true classes with 40% symmetric noise. kdcore-lp builds the kNN
graph with the ``faiss_ivf`` backend (approximate; ``sqrt(N)`` inverted lists, ``--nprobe``
probed per query), then 20 conjugate-gradient iterations, AML-KD's settings (k = 20,
alpha = 0.99, affinity s^3). The exact chunked search would take about an hour here (N^2 d
multiply-adds on 2 cores); its neighbours are computed for ``--check`` random queries only, to
measure the approximate search's recall.

Reported: each phase's time, the peak RSS above the RSS with the features in memory (VmHWM,
reset after they are made), LP label accuracy against the true classes next to the seeds'
accuracy (0.6 by construction), and kNN recall at k.

Usage:  .venv/bin/python benchmarks/lp_million.py [--n 1000000] [--dim 128] [--nprobe 16]
Needs faiss-cpu (pip install 'kdcore-lp[faiss]'). Writes benchmarks/results/lp_million.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results"
K, ALPHA, ITERS, TOL, GAMMA, CLASSES, MODES = 20, 0.99, 20, 1e-6, 3.0, 10, 20


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic(n: int, dim: int, noise: float, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, true classes and 40%-noisy seed labels (see the module's text)."""
    g = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(CLASSES * MODES, dim, generator=g), dim=1)
    mode = torch.randint(0, CLASSES * MODES, (n,), generator=g)
    truth = mode % CLASSES
    feats = directions[mode]
    for start in range(0, n, 100_000):  # in place, a block at a time: no second copy
        block = feats[start:start + 100_000]
        block.add_(torch.randn(block.shape, generator=g), alpha=noise)
    flip = torch.rand(n, generator=g) < 0.4
    other = (truth + torch.randint(1, CLASSES, (n,), generator=g)) % CLASSES
    seeds = torch.where(flip, other, truth)
    return feats, truth, seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--noise", type=float, default=0.2,
                        help="per-coordinate noise around a point's direction")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--check", type=int, default=1000,
                        help="random queries whose exact neighbours measure recall")
    parser.add_argument("--out", type=Path, default=RESULTS / "lp_million.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    import faiss

    faiss.omp_set_num_threads(2)
    from kdcore_lp.graph import ivf_lists, knn, normalized_affinity
    from kdcore_lp.propagation import class_balanced_seeds
    from kdcore_lp.solve import conjugate_gradient

    feats, truth, seeds = synthetic(args.n, args.dim, args.noise)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on
    base = status_mb("VmRSS")
    t0 = time.perf_counter()
    idx, sims = knn(feats, K, backend="faiss_ivf", cosine=True, nprobe=args.nprobe)
    t_knn = time.perf_counter()
    w = normalized_affinity(idx, sims, GAMMA)
    t_graph = time.perf_counter()
    z = conjugate_gradient(w, class_balanced_seeds(seeds, CLASSES), alpha=ALPHA, tol=TOL,
                           maxiter=ITERS)
    t_cg = time.perf_counter()
    peak = status_mb("VmHWM") - base
    labels = z.clamp_min(0).argmax(1)
    queries = torch.randperm(args.n, generator=torch.Generator().manual_seed(1))[:args.check]
    unit = F.normalize(feats, dim=1)
    exact = torch.cat([(unit[q] @ unit.T).index_put_((torch.arange(len(q)), q),
                                                     torch.tensor(float("-inf")))
                       .topk(K, dim=1).indices for q in queries.split(100)])
    recall = sum(len(set(a.tolist()) & set(e.tolist()))
                 for a, e in zip(idx[queries], exact)) / (K * len(queries))
    out = {
        "n": args.n, "dim": args.dim, "classes": CLASSES, "modes_per_class": MODES,
        "noise": args.noise, "k": K, "alpha": ALPHA, "cg_iterations": ITERS, "threads": 2,
        "backend": "faiss_ivf", "ivf_lists": ivf_lists(args.n), "nprobe": args.nprobe,
        "knn_s": t_knn - t0, "graph_s": t_graph - t_knn, "cg_s": t_cg - t_graph,
        "total_s": t_cg - t0, "peak_mb_above_features": peak,
        "features_mb": feats.numel() * 4 / 2**20, "graph_nnz": int(w.values().numel()),
        "seed_acc": float((seeds == truth).double().mean()),
        "lp_label_acc": float((labels == truth).double().mean()),
        "knn_recall_at_k": recall, "recall_queries": args.check,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
