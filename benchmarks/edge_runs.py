"""Every registered component's numeric parameters at the edges (tests/test_component_edges.py's
values: inf, 1e300, 3.5e38, -1, 0, 10**12, ...): each value that ``kdcore check`` accepts is
run (the test's tiny recipe for that component, in process), and every run that does not end
with exit 0 is printed. The test holds ``check`` to one line for every value; this is the rest
of the rule: what ``check`` accepts should run.

Usage:  .venv/bin/python benchmarks/edge_runs.py [--after NAME]
Run it under a memory limit (``ulimit -v 16000000``): a value that allocates without bound then
fails with an error instead of calling the kernel's out-of-memory killer on the whole sweep.
Prints one line per failing run, then how many values were accepted and run.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1]))

from kdcore.cli import main as cli  # noqa: E402
from kdcore.testing import write_recipe  # noqa: E402
from tests import test_component_edges as edges  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--after", default="", help="only the components named after this")
    args = parser.parse_args()
    runner, accepted, failed = CliRunner(), 0, 0
    work = Path(tempfile.mkdtemp(prefix="edge-runs-"))
    for name in edges.HOST.components.names():
        if name <= args.after:
            continue
        base = edges._base(name)
        for field, values in edges._numeric_fields(edges.HOST.components.get(name).Params):
            for value in values:
                recipe = copy.deepcopy(base)
                entry = next(c for s in recipe["stages"] for c in s["components"]
                             if c["use"] == name)
                entry["params"] = {field: value}
                path = write_recipe(recipe, work / "edge.toml")
                if runner.invoke(cli, ["check", str(path)]).exit_code != 0:
                    continue
                accepted += 1
                result = runner.invoke(cli, ["run", str(path), "--out", str(work / "run"),
                                             "--overwrite", "--quiet"])
                if result.exit_code != 0:
                    failed += 1
                    lines = result.output.strip().splitlines()
                    print(f"{name}.{field} = {value!r}: exit {result.exit_code}: "
                          f"{lines[-1][:240] if lines else repr(result.exception)}", flush=True)
    print(f"{accepted} values accepted by check and run; {failed} failed")


if __name__ == "__main__":
    main()
