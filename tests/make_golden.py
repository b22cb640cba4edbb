"""Regenerate tests/fixtures/losses.json (run by hand only when a loss is meant to change)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kdcore.losses import kd_kl, normalized_entropy, smooth_targets, soft_cross_entropy

LOGITS_S = [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0]]
LOGITS_T = [[1.0, 0.0, -1.0], [3.0, -2.0, 0.0], [0.0, 2.5, 2.0]]
TARGETS = [[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.0, 0.0, 1.0]]


def compute() -> dict[str, list[float]]:
    s, t, q = (torch.tensor(v, dtype=torch.float64) for v in (LOGITS_S, LOGITS_T, TARGETS))
    return {
        "soft_cross_entropy": soft_cross_entropy(s, q).tolist(),
        "kd_kl_T1": kd_kl(s, t, 1.0).tolist(),
        "kd_kl_T4": kd_kl(s, t, 4.0).tolist(),
        "smooth_targets_0.1": smooth_targets(q, 0.1).flatten().tolist(),
        "normalized_entropy": normalized_entropy(torch.softmax(s, 1)).tolist(),
    }


if __name__ == "__main__":
    out = {"inputs": {"logits_s": LOGITS_S, "logits_t": LOGITS_T, "targets": TARGETS},
           "values": compute()}
    path = Path(__file__).parent / "fixtures" / "losses.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
