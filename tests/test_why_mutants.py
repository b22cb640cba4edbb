"""The patches of benchmarks/why_mutants.py and hand_mutants.py still match the code (running
them takes minutes: see docs/mutation.md), and their copy of the repository builds; a refactor
that moves a mutated line must update its mutant."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

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


def test_the_copy_holds_what_the_tests_read(tmp_path):
    where = tmp_path / "repo"
    why.build_copy(where, ["kdcore-lp"])
    for part in ("kdcore/loop.py", "tests/conftest.py", "recipes/amlkd.toml", "pyproject.toml",
                 "plugins/kdcore-lp/kdcore_lp/solve.py", "plugins/kdcore-lp/tests"):
        assert (where / part).exists(), part


def test_hand_mutants_match_their_files_once():
    spec = importlib.util.spec_from_file_location("hand_mutants", ROOT / "benchmarks" /
                                                  "hand_mutants.py")
    hand = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hand)
    for m, tests in hand.MUTANTS:
        assert m.line() > 0 and m.replacement != m.original, m.key
        # test files or node ids (file::test), besides pytest options and a -k's expression
        files = [t.split("::")[0] for i, t in enumerate(tests)
                 if not t.startswith("-") and (i == 0 or tests[i - 1] != "-k")]
        assert files and all((ROOT / f).is_file() for f in files), m.key


def test_every_mutation_target_names_modules_and_tests_that_exist():
    # a renamed test file would otherwise leave its target's mutants unkilled without a word
    for name, (package, modules, tests) in why.mutants.TARGETS.items():
        for module in modules:
            assert (ROOT / package / module).exists(), (name, module)
        paths = [t for t in tests if t.startswith("tests")]
        assert paths, name
        for path in paths:
            assert (ROOT / package / path.split("::")[0]).exists(), (name, path)


def test_only_names_the_mutants_of_one_target(monkeypatch):
    for argv in (["kdcore-cli", "kdcore-figures"], []):
        monkeypatch.setattr(sys, "argv", ["mutants.py", *argv, "--only", "kdcore.cli.x_*"])
        with pytest.raises(SystemExit, match="--only names mutants of one target"):
            why.mutants.main()
