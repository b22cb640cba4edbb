"""Reconstructions are named as such wherever their numbers appear: the label mapping of
benchmarks/results_doc.py (the generator of docs/results.md), the tables it writes, and
docs/results.md and README.md as committed (the grids' runs are not needed)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "results.md").read_text()
README = (ROOT / "README.md").read_text()

spec = importlib.util.spec_from_file_location("results_doc", ROOT / "benchmarks" / "results_doc.py")
results_doc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_doc)

FF = "F&F-style reconstruction"
SMKD = "SMKD (our reading of open choices)"
KDMLC = "KDMLC (our reading)"
LABELLED = {"ff": FF, "smkd-progressive": SMKD, "smkd-static": SMKD, "kdmlc": KDMLC}


@pytest.mark.parametrize(("variant", "label"), LABELLED.items())
def test_caveated_variants_carry_their_label(variant, label):
    assert results_doc.variant_label(variant) == f"{variant} — {label}"


@pytest.mark.parametrize("variant", ["ce", "clean", "kd", "ls", "mlc", "dml", "independent",
                                     "amlkd", "almkd", "amal", "lshl2"])
def test_other_variants_keep_their_name(variant):
    assert results_doc.variant_label(variant) == variant


def test_each_table_gets_one_footnote_per_caveated_method():
    notes = results_doc.caveat_notes(["ce", "ff", "kdmlc", "smkd-static", "smkd-progressive"])
    lines = [line for line in notes.splitlines() if line]
    assert [line.split("*")[1] for line in lines] == [FF, SMKD, KDMLC]
    assert "not F&F's numbers" in lines[0]
    assert results_doc.caveat_notes(["ce", "kd", "mlc"]) == ""


def _row(variant, model, acc):
    return {"variant": variant, "model": model, "seeds": 3, "best_mean": acc, "best_std": 0.0,
            "last_mean": acc, "last_std": 0.0, "best_bacc_mean": acc, "best_bacc_std": 0.0}


def test_the_generated_tables_name_the_reconstruction():
    rows = [_row("ce", "student", 0.80), _row("clean", "student", 0.90),
            _row("ff", "student", 0.85)]
    section = results_doc.Section("F&F-style reconstruction on x", "setting", "ff-x")
    summary = results_doc.summary_table([(section, rows)])
    assert f"| setting | ff — {FF} | student | 85.00 ± 0.00 | **+0.50** |" in summary
    assert summary.rstrip().splitlines()[-1].startswith(f"*{FF}*:")
    table = results_doc.markdown_table(results_doc.labelled(rows), baseline="ce",
                                       ceiling="clean")
    assert f"| ff — {FF} | student | 3 | 85.00 ± 0.00 | 85.00 ± 0.00 | 85.00 ± 0.00 | +0.50 |" \
        in table  # the gap is still computed against the (unlabelled) baselines


def test_section_titles_name_the_reconstructions():
    titles = [s.title for s in results_doc.SECTIONS]
    for title in titles:
        if "F&F" in title:
            assert title.startswith(FF)
        if "SMKD" in title:
            assert SMKD in title
        if "KDMLC" in title:
            assert KDMLC in title
    assert sum("F&F" in t for t in titles) == 3


# -- docs/results.md, as committed --------------------------------------------------------------


def test_results_doc_has_the_generator_section_titles():
    headings = re.findall(r"^## (.+)$", DOC, flags=re.M)
    assert headings[1:] == [s.title for s in results_doc.SECTIONS] + [results_doc.ISSUE_TITLE]


def test_results_doc_has_no_bare_ff_headline():
    for line in DOC.splitlines():
        if "F&F" in line:
            assert "reconstruction" in line, line
    for heading in re.findall(r"^#+ (.+)$", DOC, flags=re.M):
        assert not re.search(r"\bF&F\b(?!-style reconstruction)", heading), heading


def _tables(doc: str):
    """(table lines, the lines after it up to the next table or heading) of every table."""
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|"):
            start = i
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            after = []
            while i < len(lines) and not lines[i].startswith(("|", "#")):
                after.append(lines[i])
                i += 1
            yield lines[start:i - len(after)], after
        else:
            i += 1


def test_every_row_of_a_caveated_variant_is_labelled_and_footnoted():
    seen = set()
    for table, after in _tables(DOC):
        col = 1 if table[0].startswith("| setting |") else 0
        variants = [row[2:-2].split(" | ")[col] for row in table[2:]]
        bare = [v for v in variants if v in LABELLED]
        assert not bare, f"unlabelled rows {bare} in a table headed {table[0]}"
        methods = {v.split(" — ")[1] for v in variants if " — " in v}
        for v in variants:
            if " — " in v:
                name, label = v.split(" — ")
                assert LABELLED[name] == label
                seen.add(name)
        if col == 1 or table[0].startswith("| variant | model | seeds |"):
            notes = [line for line in after if line.startswith("*")]
            assert [n.split("*")[1] for n in notes] == [
                label for label in (FF, SMKD, KDMLC) if label in methods]
    assert seen == set(LABELLED)


def test_readme_methods_table_names_the_reconstructions():
    rows = {line.split(" | ")[0]: line for line in README.splitlines() if line.startswith("| `")}
    assert FF in rows["| `ff`"]
    assert SMKD in rows["| `smkd`, `smkd-static`, `dml`"]
    assert KDMLC in rows["| `mlc`, `kdmlc`"]


def test_a_grid_not_rerun_keeps_its_earlier_table_marked_once(tmp_path):
    old = tmp_path / "results.md"
    old.write_text("# Results\n\nintro\n\n## Kept grid\n\n```sh\nkdcore ablate x\n```\n\n"
                   "| variant | acc |\n|---|---|\n| kd | 1.0 |\n\n## Never run\n\n```sh\ncmd\n"
                   "```\n\nNot run yet.\n")
    sections = results_doc.previous_sections(old)
    assert set(sections) == {"Kept grid"}  # a "Not run yet" section has nothing to keep
    body = sections["Kept grid"]
    assert body.startswith(results_doc.EARLIER) and "| kd | 1.0 |" in body
    # regenerating again does not stack the mark
    old.write_text("# Results\n\n## Kept grid\n\n```sh\nkdcore ablate x\n```\n\n" + body)
    assert results_doc.previous_sections(old)["Kept grid"] == body
    assert results_doc.previous_sections(tmp_path / "missing.md") == {}
