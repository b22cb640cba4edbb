"""Every torchvision classifier as the student of ``recipes/ce.toml``, on 8x8 digits images and
on 32x32 RGB images (an npz of random pixels this script writes): ``kdcore check``, then, for
each one ``check`` accepts, one epoch of ``kdcore run`` (in process). The rule is that what
``check`` accepts trains; a model it refuses is listed with its one line, to be read for
refusals of models that would train.

Usage:  .venv/bin/python benchmarks/torchvision_runs.py [--max-params 60e6] [--sizes 8 32]
Models with more parameters than ``--max-params`` are left out (on this CPU an epoch of them
takes minutes); they are listed as left out. Prints one line per model and size, then the
counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1]))

from kdcore.cli import main as cli  # noqa: E402
from kdcore.footprint import build_on_meta  # noqa: E402

RECIPE = str(Path(__file__).parents[1] / "recipes" / "ce.toml")


def _rgb_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (120, 3, 32, 32), dtype=np.uint8),
             y_train=np.arange(120) % 10,
             x_test=rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8),
             y_test=np.arange(40) % 10)
    return path


def _parameters(name: str) -> int:
    import torchvision.models as tvm

    extra = {"aux_logits": False, "init_weights": True} if name in ("googlenet",
                                                                    "inception_v3") else {}
    model = build_on_meta(lambda: tvm.get_model(name, weights=None, **extra))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    import torchvision.models as tvm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-params", type=float, default=60e6)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="torchvision-runs-"))
    data = {8: ["--set", "data.params={flatten=false}", "--set", "data.train_subset=96"],
            32: ["--set", "data.dataset='npz'", "--set",
                 f"data.params={{path='{_rgb_npz(work / 'rgb32.npz')}'}}"]}
    runner = CliRunner()
    counts = {"trained": 0, "failed": 0, "refused": 0, "left out": 0}
    for name in tvm.list_models(module=tvm):
        params = _parameters(name)
        if params > args.max_params:
            print(f"{name}: left out ({params / 1e6:.0f}M parameters)", flush=True)
            counts["left out"] += 1
            continue
        for size in args.sizes:
            base = [RECIPE, *data[size], "--set", "models.student.arch='torchvision'",
                    "--set", f"models.student.params={{name='{name}'}}",
                    "--set", "data.batch_size=32", "--set", "stages.student.epochs=1"]
            checked = runner.invoke(cli, ["check", *base])
            if checked.exit_code:
                line = checked.output.strip().splitlines()[-1] if checked.output.strip() else ""
                print(f"{name} {size}x{size}: refused by check: {line[-200:]}", flush=True)
                counts["refused"] += 1
                continue
            t0 = time.perf_counter()
            ran = runner.invoke(cli, ["run", *base, "--out", str(work / f"{name}-{size}")])
            lines = ran.output.strip().splitlines()
            last = lines[-1] if lines else repr(ran.exception)
            ok = ran.exit_code == 0
            counts["trained" if ok else "failed"] += 1
            print(f"{name} {size}x{size}: {'trained' if ok else 'FAILED'} "
                  f"(exit {ran.exit_code}, {time.perf_counter() - t0:.0f} s): {last[-160:]}",
                  flush=True)
    print(", ".join(f"{n} {what}" for what, n in counts.items()))


if __name__ == "__main__":
    main()
