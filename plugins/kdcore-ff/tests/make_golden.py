"""Regenerate fixtures/ssl_golden.json (run by hand only when the loss is meant to change).

    .venv/bin/python plugins/kdcore-ff/tests/make_golden.py

``test_ssl.py`` checks these values against the code and, independently, against a plain
Python transcription of NT-Xent (``reference_nt_xent`` there).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kdcore_ff.ssl import nt_xent

Z1 = [[1.0, 0.5, -0.2, 0.0], [0.1, -1.0, 0.3, 0.8], [-0.5, 0.2, 1.5, -0.3]]
Z2 = [[0.9, 0.7, -0.1, 0.2], [0.4, -0.8, 0.0, 0.5], [0.6, 0.1, 0.2, -1.0]]
Z1_B4 = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2], [0.3, -0.7]]
Z2_B4 = [[0.8, 0.3], [0.2, 0.9], [-0.6, -0.5], [0.5, -0.5]]

CASES: dict[str, tuple[list[list[float]], list[list[float]], float]] = {
    "b3_d4_t0.5": (Z1, Z2, 0.5),
    "b3_d4_t0.1": (Z1, Z2, 0.1),
    "b3_d4_t2": (Z1, Z2, 2.0),
    "b4_d2_t0.5": (Z1_B4, Z2_B4, 0.5),
    "b1": ([[1.0, 2.0]], [[-1.0, 0.5]], 0.5),
}


def compute() -> dict[str, object]:
    out: dict[str, object] = {}
    for name, (z1, z2, t) in CASES.items():
        loss = nt_xent(torch.tensor(z1, dtype=torch.float64), torch.tensor(z2, dtype=torch.float64),
                       t)
        out[name] = {"z1": z1, "z2": z2, "temperature": t, "loss": loss.tolist()}
    return out


if __name__ == "__main__":
    path = Path(__file__).parent / "fixtures" / "ssl_golden.json"
    path.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {path}")
