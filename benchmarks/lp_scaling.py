"""Label propagation at Fashion-MNIST scale: kdcore-lp against faiss + scipy, in one run.

The computation (AML-KD's, k = 20, alpha = 0.99, 20 CG iterations, tolerance 1e-6): L2-normalise
the teacher's penultimate features, exact inner-product kNN (self excluded), affinity s^3,
W = A + A^T, D^-1/2 W D^-1/2, then (I - alpha W) Z = Y for every class column from
class-balanced seeds.

* kdcore-lp: chunked exact search with torch matrix products and top-k, a torch sparse graph,
  and one batched conjugate gradient over all class columns.
* reference: faiss ``IndexFlatIP`` (exact) for the search, scipy sparse matrices for the graph,
  ``scipy.sparse.linalg.cg`` per class (what AML-KD's released code does, faiss-gpu there).

Each measurement runs in a fresh process; peak memory is the process's peak RSS (VmHWM, reset
once the features are loaded) above its RSS at that point. Sizes: the first N of the
60,000 training images.
training images.

Usage:  .venv/bin/python benchmarks/lp_scaling.py [--sizes 15000 30000 60000] [--repeats 2]
Needs Fashion-MNIST (make fashion-mnist) and faiss-cpu (pip install 'kdcore-lp[faiss]').
Writes benchmarks/results/lp_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
FEATURES = RESULTS / "fmnist_teacher_features.pt"
K, ALPHA, ITERS, TOL, GAMMA = 20, 0.99, 20, 1e-6, 3.0


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc (VmRSS: now, VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Start the peak-RSS count afresh (Linux: writing 5 to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def make_features() -> None:
    """Train an MLP teacher [512, 512] on noisy Fashion-MNIST for 3 epochs; keep its
    penultimate features and predictions of all 60,000 training images."""
    import torch
    import torch.nn.functional as F

    from kdcore.data.base import NoiseContext
    from kdcore.data.loaders import fashion_mnist
    from kdcore.data.noise import symmetric
    from kdcore.models.base import ModelSpec
    from kdcore.models.zoo import mlp

    torch.manual_seed(0)
    data = fashion_mnist(flatten=True).train
    gen = torch.Generator().manual_seed(0)
    noisy = symmetric(NoiseContext(data.y, 10, gen), rate=0.4)
    model = mlp(ModelSpec((784,), 10), hidden=(512, 512))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        perm = torch.randperm(len(noisy), generator=gen)
        for s in range(0, len(perm), 128):
            i = perm[s:s + 128]
            loss = F.cross_entropy(model(data.x[i])[0], noisy[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits, feats = model(data.x)
    torch.save({"features": feats, "pred": logits.argmax(1), "labels": data.y}, FEATURES)


def measure(method: str, n: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(2)
    blob = torch.load(FEATURES)
    feats = blob["features"][:n].clone()
    seeds = blob["pred"][:n].clone()
    truth = blob["labels"][:n].clone()
    del blob
    reset_peak()
    base = status_mb("VmRSS")
    t0 = time.perf_counter()
    if method == "kdcore":
        from kdcore_lp.graph import feature_graph
        from kdcore_lp.propagation import class_balanced_seeds
        from kdcore_lp.solve import conjugate_gradient

        w = feature_graph(feats, k=K, gamma=GAMMA)
        z = conjugate_gradient(w, class_balanced_seeds(seeds, 10), alpha=ALPHA, tol=TOL,
                               maxiter=ITERS)
        labels = z.clamp_min(0).argmax(1).numpy()
    else:
        import faiss
        import numpy as np
        import scipy.sparse as sp
        from scipy.sparse.linalg import cg

        faiss.omp_set_num_threads(2)
        x = torch.nn.functional.normalize(feats, dim=1).numpy().astype("float32")
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sims, idx = index.search(x, K + 1)
        # drop the row itself (not always the first hit when duplicates exist)
        keep = idx != np.arange(n)[:, None]
        keep &= np.cumsum(keep, 1) <= K
        rows = np.repeat(np.arange(n), K)
        cols = idx[keep]
        vals = sims[keep].astype(np.float64) ** GAMMA
        a = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
        w = a + a.T
        w.setdiag(0)
        w.eliminate_zeros()
        d = np.asarray(w.sum(1)).ravel()
        d[d == 0] = 1
        dinv = sp.diags(1 / np.sqrt(d))
        w = dinv @ w @ dinv
        op = sp.eye(n) - ALPHA * w
        y = np.zeros((n, 10))
        y[np.arange(n), seeds.numpy()] = 1
        y /= np.maximum(y.sum(0), 1)
        z = np.zeros((n, 10))
        for c in range(10):
            z[:, c], _ = cg(op, y[:, c], rtol=TOL, maxiter=ITERS)
        labels = np.maximum(z, 0).argmax(1)
    wall = time.perf_counter() - t0
    peak = status_mb("VmHWM")
    acc = float((torch.as_tensor(labels) == truth).double().mean())
    return {"wall_s": wall, "peak_mb_above_start": peak - base, "lp_label_acc": acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[15000, 30000, 60000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return
    RESULTS.mkdir(exist_ok=True)
    if not FEATURES.exists():
        make_features()
    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    for n in args.sizes:
        for rep in range(args.repeats):
            order = ("kdcore", "faiss_scipy") if rep % 2 == 0 else ("faiss_scipy", "kdcore")
            for method in order:
                env = {**os.environ, "OMP_NUM_THREADS": "2"}
                proc = subprocess.run([sys.executable, __file__, "--one", method, str(n)],
                                      capture_output=True, text=True, env=env, check=True)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                out.setdefault(str(n), {}).setdefault(method, []).append(result)
                print(f"N={n} {method}: {result}")
    summary = {}
    for n, by in out.items():
        ours = statistics.fmean(r["wall_s"] for r in by["kdcore"])
        ref = statistics.fmean(r["wall_s"] for r in by["faiss_scipy"])
        summary[n] = {
            "kdcore_wall_s": ours, "faiss_scipy_wall_s": ref, "ratio": ours / ref,
            "kdcore_peak_mb": max(r["peak_mb_above_start"] for r in by["kdcore"]),
            "faiss_scipy_peak_mb": max(r["peak_mb_above_start"] for r in by["faiss_scipy"]),
            "kdcore_lp_acc": by["kdcore"][0]["lp_label_acc"],
            "faiss_scipy_lp_acc": by["faiss_scipy"][0]["lp_label_acc"],
        }
    (RESULTS / "lp_scaling.json").write_text(json.dumps({"k": K, "alpha": ALPHA,
                                                         "cg_iterations": ITERS, "threads": 2,
                                                         "runs": out, "summary": summary},
                                                        indent=1) + "\n")
    for n, s in summary.items():
        print(f"N={n}: kdcore {s['kdcore_wall_s']:.1f}s / faiss+scipy "
              f"{s['faiss_scipy_wall_s']:.1f}s = {s['ratio']:.2f}; peak MB kdcore "
              f"{s['kdcore_peak_mb']:.0f}, faiss+scipy {s['faiss_scipy_peak_mb']:.0f}")


if __name__ == "__main__":
    main()
