"""The shape of kdcore/: no import cycle, a light `import kdcore`, small modules, and plugins
that use the public API only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "kdcore"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every kdcore module ``path`` imports, anywhere in the file (module level, functions,
    ``TYPE_CHECKING`` blocks): a cycle through any of them is still a cycle."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # "from kdcore.x import y": y is a submodule, or a name defined in kdcore.x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, name, modules) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_kdcore_has_no_import_cycle():
    graph = {k: {m for m in v if m != "kdcore"} for k, v in import_graph().items()}
    # the package itself re-exports the public API; submodules import from its modules
    assert all("kdcore" not in deps for name, deps in import_graph().items()
               if name != "kdcore" and not name.startswith("kdcore.builtin")), \
        "a kdcore submodule imports the kdcore package (import from the defining module)"
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_context_is_a_leaf():
    assert import_graph()["kdcore.context"] <= {"kdcore.recipe"}  # under TYPE_CHECKING only


def test_no_module_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_import_kdcore_does_not_load_the_engine_or_the_history():
    code = ("import sys, kdcore; heavy = [m for m in ('kdcore.engine', 'kdcore.loop', "
            "'kdcore.history', 'h5py') if m in sys.modules]; print(heavy); "
            "kdcore.run_recipe; print('kdcore.engine' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "[]", out
    assert out[1] == "True"  # and the engine is one attribute access away


def test_plugins_import_only_the_public_api():
    public = {"kdcore", "kdcore.context", "kdcore.hookspecs", "kdcore.losses", "kdcore.metrics",
              "kdcore.meta", "kdcore.config", "kdcore.validators", "kdcore.history",
              "kdcore.device", "kdcore.testing", "kdcore.batching"}
    offenders = []
    for path in (ROOT / "plugins").rglob("*.py"):
        if "/tests/" in str(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.startswith("kdcore") and not n.startswith("kdcore_")
                          and n not in public]
    assert not offenders, offenders


def test_each_lazy_export_is_its_modules_object_and_other_names_are_attribute_errors(
        monkeypatch):
    import importlib

    import kdcore

    homes = {"run_recipe": "kdcore.engine", "dry_setup": "kdcore.engine",
             "History": "kdcore.history", "run": "kdcore.api", "ablate": "kdcore.api",
             "load_history": "kdcore.api", "label_issues": "kdcore.label_ranking"}
    for name, module in homes.items():
        monkeypatch.delitem(vars(kdcore), name, raising=False)  # as if never used before
        home = getattr(importlib.import_module(module), name)
        assert getattr(kdcore, name) is home
        assert vars(kdcore)[name] is home  # kept: the next use is a plain attribute
    assert set(homes) <= set(kdcore.__all__)  # exported, though loaded on first use
    with pytest.raises(AttributeError, match=r"^module 'kdcore' has no attribute 'engine_v1'$"):
        kdcore.engine_v1  # noqa: B018
