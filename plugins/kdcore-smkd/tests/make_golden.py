"""Regenerate fixtures/smkd_golden.json (run by hand only when a loss is meant to change).

    .venv/bin/python plugins/kdcore-smkd/tests/make_golden.py

The test module checks these values against the code and, independently, against a plain
Python transcription of the equations (``reference_smkd`` in ``test_losses.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kdcore_smkd.losses import dml_loss, smkd_loss, threshold_at

# three samples, three classes: a confident, an uncertain and a middling prediction per model
LOGITS = [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0]]
PEER_A = [[3.0, 0.0, -1.0], [0.2, 0.0, 0.1], [0.0, 1.5, 1.0]]
PEER_B = [[0.5, 0.4, 0.3], [4.0, -2.0, 0.0], [1.0, 0.0, 2.5]]
TARGETS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

# name -> (peers, keyword arguments of smkd_loss)
SMKD_CASES: dict[str, tuple[list[str], dict]] = {
    "static_uniform_target": (["a"], {"threshold": 0.3}),
    "static_none_target": (["a"], {"threshold": 0.3, "fallback": "none"}),
    "static_uniform_kl": (["a"], {"threshold": 0.3, "form": "kl"}),
    "eps_0.2": (["a"], {"threshold": 0.3, "epsilon": 0.2}),
    "adaptive": (["a"], {"threshold": 0.3, "epsilon_mode": "adaptive", "trust": 0.7}),
    "max_prob": (["a"], {"threshold": 0.6, "certainty_measure": "max_prob"}),
    "temperature_2": (["a"], {"threshold": 0.3, "temperature": 2.0}),
    "temperature_2_kl": (["a"], {"threshold": 0.3, "temperature": 2.0, "form": "kl"}),
    "proselflc_none": (["a"], {"threshold": 0.3, "fallback": "none",
                               "self_correction": "proselflc", "trust": 0.7}),
    "two_peers": (["a", "b"], {"threshold": 0.3}),
    "two_peers_none_adaptive": (["a", "b"], {"threshold": 0.3, "fallback": "none",
                                             "epsilon_mode": "adaptive", "trust": 0.5}),
}
DML_CASES: dict[str, tuple[list[str], dict]] = {
    "dml": (["a"], {}),
    "dml_T3": (["a"], {"temperature": 3.0}),
    "dml_two_peers_sum": (["a", "b"], {"peer_reduction": "sum"}),
    "dml_two_peers_mean": (["a", "b"], {"peer_reduction": "mean"}),
}
# (t, Gamma, keyword arguments of threshold_at)
THRESHOLD_CASES: list[tuple[float, float, dict]] = [
    (t, 100, {"schedule": "progressive", "threshold": 0.0, "direction": d, "exp_base": b,
              "transit": r})
    for d in ("relax", "tighten") for b, r in ((10.0, 0.5), (6.0, 0.3))
    for t in (0, 25, 30, 50, 99, 100)
]


def tensors() -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in
            (("logits", LOGITS), ("a", PEER_A), ("b", PEER_B), ("targets", TARGETS))}


def compute() -> dict[str, object]:
    x = tensors()
    out: dict[str, object] = {}
    for name, (peers, kw) in SMKD_CASES.items():
        out[name] = smkd_loss(x["logits"], [x[p] for p in peers], x["targets"], **kw).tolist()
    for name, (peers, kw) in DML_CASES.items():
        out[name] = dml_loss(x["logits"], [x[p] for p in peers], x["targets"], **kw).tolist()
    out["thresholds"] = [threshold_at(t, g, **kw) for t, g, kw in THRESHOLD_CASES]
    return out


if __name__ == "__main__":
    data = {"inputs": {"logits": LOGITS, "peer_a": PEER_A, "peer_b": PEER_B,
                       "targets": TARGETS},
            "values": compute()}
    path = Path(__file__).parent / "fixtures" / "smkd_golden.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path}")
