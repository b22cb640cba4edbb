"""benchmarks/why_mutants.py's patches still match the code (running them takes minutes: see
docs/mutation.md); a refactor that moves a mutated line must update its mutant."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("why_mutants", ROOT / "benchmarks" /
                                              "why_mutants.py")
why = importlib.util.module_from_spec(spec)
sys.modules.setdefault("why_mutants", why)  # its dataclass looks itself up there
spec.loader.exec_module(why)


def test_every_patch_matches_its_file_once_and_changes_it():
    for m in why.MUTANTS:
        assert m.line() > 0, m.key  # SystemExit (a failure) unless the snippet is there once
        assert m.replacement != m.original, m.key
        assert m.target in why.mutants.TARGETS and m.path.startswith(m.package + "/"), m.key


def test_every_item_of_the_issue_has_a_mutant():
    keys = [m.key for m in why.MUTANTS]
    assert len(set(keys)) == len(keys)
    assert {k.rstrip("abc") for k in keys} == {str(i) for i in range(1, 15)}
