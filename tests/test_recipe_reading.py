"""Reading a recipe (kdcore/recipe/resolve.py) at the edges of what it accepts, with each
refusal's whole message, file and key: the size limit, the ``extends`` chain's length, list
entries addressed from the end, the nesting depth and TOML's integer range at their bounds,
and merges that must not share data with the base they came from."""

from __future__ import annotations

import os

import pytest

from kdcore.errors import RecipeError
from kdcore.recipe import load_recipe, recipe_from_dict
from kdcore.recipe.resolve import (
    MAX_DEPTH,
    MAX_EXTENDS,
    MAX_RECIPE_BYTES,
    apply_override,
    check_plain,
    load_raw,
    merge,
    parse_override,
    read_toml,
    strip_replace,
)
from kdcore.testing import component, stage, teacher_stage, tiny_recipe, write_recipe


def _assert_refused(call) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        call()
    return info.value


@pytest.fixture
def good(tmp_path):
    data = tiny_recipe(teacher_stage(1), stage("student", 1, ["student"], component("ce")))
    return write_recipe(data, tmp_path / "good.toml")


# -- the file ---------------------------------------------------------------------------------


def test_a_recipe_of_exactly_the_size_limit_is_read_and_one_byte_more_is_not(tmp_path):
    path = tmp_path / "big.toml"
    head = b'x = "'
    path.write_bytes(head + b"a" * (MAX_RECIPE_BYTES - len(head) - 2) + b'"\n')
    assert os.path.getsize(path) == MAX_RECIPE_BYTES
    assert len(read_toml(path)["x"]) == MAX_RECIPE_BYTES - len(head) - 2
    path.write_bytes(head + b"a" * (MAX_RECIPE_BYTES - len(head) - 1) + b'"\n')
    err = _assert_refused(lambda: read_toml(path))
    assert (err.file, err.key, err.detail) == (
        str(path), None, "larger than 1 MiB; a recipe is a few kilobytes of TOML")


@pytest.mark.parametrize(("content", "detail"), [
    (b'[run]\nname = "\xe9t\xe9"\n',
     "not UTF-8 text (byte 0xe9 at offset 14); TOML files must be UTF-8"),
    (b"x = " + b"[" * 2000 + b"]" * 2000 + b"\n",
     "malformed TOML: arrays or tables nested too deeply for the reader"),
    (b"x = 1\nx = 2\n", "malformed TOML: Cannot overwrite a value (at line 2, column 6)"),
    # after a byte-order mark: offsets in the file, lines and columns as an editor shows them
    (b'\xef\xbb\xbf[run]\nname = "\xe9t\xe9"\n',
     "not UTF-8 text (byte 0xe9 at offset 17); TOML files must be UTF-8"),
    (b"\xef\xbb\xbfx = 1\nx = 2\n",
     "malformed TOML: Cannot overwrite a value (at line 2, column 6)"),
    (b"\xef\xbb\xbf\xef\xbb\xbfx = 1\n",  # one mark is dropped, not two
     "malformed TOML: Invalid statement (at line 1, column 1)"),
    # tomllib lets int()'s refusal through as a bare ValueError
    (b"[run]\nseed = " + b"9" * 4301 + b"\n", "malformed TOML: an integer of more than 4,300 "
     "digits, past what Python reads; no recipe value needs one"),
])
def test_unreadable_content_names_the_file(tmp_path, content, detail):
    path = tmp_path / "r.toml"
    path.write_bytes(content)
    err = _assert_refused(lambda: read_toml(path))
    assert (err.file, err.key, err.detail) == (str(path), None, detail)


def test_a_recipe_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Windows editors (Notepad) may start a UTF-8 file with U+FEFF; tomllib refused it as
    "Invalid statement (at line 1, column 1)"."""
    text = '[run]\nname = "\u00e9t\u00e9"\nseed = 3\n'
    plain, marked = tmp_path / "plain.toml", tmp_path / "marked.toml"
    plain.write_bytes(text.encode("utf-8"))
    marked.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_toml(marked) == read_toml(plain) == {"run": {"name": "\u00e9t\u00e9",
                                                             "seed": 3}}


def test_plain_data_problems_in_a_file_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[run]\nseed = nan\n")
    err = _assert_refused(lambda: read_toml(path))
    assert (err.file, err.key, err.detail) == (
        str(path), "run.seed", "NaN is not a value any recipe key accepts")


def test_unreadable_paths(tmp_path):
    nul = str(tmp_path / "a") + "\0b.toml"
    for read in (read_toml, load_raw):
        err = _assert_refused(lambda read=read: read(nul))
        assert str(err) == f"the recipe path {nul!r} contains a NUL byte"
    unreadable = tmp_path / "loop.toml"
    unreadable.symlink_to(unreadable)
    err = _assert_refused(lambda: load_raw(unreadable))
    assert err.file == str(unreadable) and err.detail.startswith("cannot read recipe: ")
    long = tmp_path / ("x" * 300)  # a name too long for the file system
    err = _assert_refused(lambda: read_toml(long))
    assert (err.file, err.detail) == (str(long),
                                      "cannot read recipe: File name too long")


# -- extends ----------------------------------------------------------------------------------


def _chain(tmp_path, length):
    """``r0.toml`` extends ``r1.toml`` ... extends ``r{length}.toml``, which extends nothing."""
    for i in range(length):
        (tmp_path / f"r{i}.toml").write_text(f'extends = "r{i + 1}.toml"\n[run]\nname = "r{i}"\n')
    (tmp_path / f"r{length}.toml").write_text('[run]\nseed = 3\nname = "last"\n')
    return tmp_path / "r0.toml"


def test_an_extends_chain_of_the_limit_is_followed_and_a_longer_one_refused(tmp_path):
    data = load_raw(_chain(tmp_path, MAX_EXTENDS))  # 32 files extend, 33 read
    assert data["run"] == {"seed": 3, "name": "r0"}
    (tmp_path / "more").mkdir()
    longer = _chain(tmp_path / "more", MAX_EXTENDS + 1)
    err = _assert_refused(lambda: load_raw(longer))
    assert err.key == "extends" and err.detail == "more than 32 recipes extend one another"
    assert err.file == str((tmp_path / "more" / f"r{MAX_EXTENDS}.toml").resolve())


@pytest.mark.parametrize(("extends", "detail"), [
    ("1", "got 1, expected a file path"),
    ('"sub"', "'sub' is a directory (SUB), not a recipe file"),
    ('"gone.toml"', "'gone.toml': no such recipe file (GONE)"),
    ('"pipe"', "'pipe': is not a regular file (PIPE)"),
    ('"/dev/zero"', "'/dev/zero': is not a regular file (/dev/zero)"),
    ('"' + "y" * 300 + '.toml"',
     "cannot read '" + "y" * 300 + ".toml': [Errno 36] File name too long: 'LONG'"),
])
def test_an_extends_that_leads_nowhere_names_the_file_and_the_key(tmp_path, extends, detail):
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "pipe")  # reading it would block until a writer came
    child = tmp_path / "child.toml"
    child.write_text(f"extends = {extends}\n")
    err = _assert_refused(lambda: load_raw(child))
    assert (err.file, err.key) == (str(child.resolve()), "extends")
    assert err.detail == (detail.replace("SUB", str((tmp_path / "sub").resolve()))
                          .replace("GONE", str((tmp_path / "gone.toml").resolve()))
                          .replace("PIPE", str((tmp_path / "pipe").resolve()))
                          .replace("LONG", str(tmp_path / ("y" * 300 + ".toml"))))


def test_a_cycle_names_every_file_in_it(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    err = _assert_refused(lambda: load_raw(tmp_path / "a.toml"))
    assert (err.file, err.key, err.detail) == (
        str((tmp_path / "b.toml").resolve()), "extends",
        "recipe extends itself in a cycle: a.toml -> b.toml -> a.toml")


def test_merging_copies_the_base_and_the_override_instead_of_sharing_them():
    def base():
        return {"t": {"a": [[1]], "o": {"k": [1]}},
                "s": [{"name": "x", "v": [[1]]}, {"name": "z", "v": [[1]]}], "r": [[0]]}

    def over():
        return {"t": {"b": [[2]], "o": {"j": 1}}, "s": [{"name": "x", "w": [[3]]},
                                                         {"name": "y", "u": [[4]]}],
                "n": [[5]], "r": [[6]]}

    b, o = base(), over()
    out = merge(b, o)
    assert out == {"t": {"a": [[1]], "o": {"k": [1], "j": 1}, "b": [[2]]},
                   "s": [{"name": "x", "v": [[1]], "w": [[3]]}, {"name": "z", "v": [[1]]},
                         {"name": "y", "u": [[4]]}],
                   "r": [[6]], "n": [[5]]}
    # every list in the result, however deep, is the result's own
    for inner in (out["t"]["a"][0], out["t"]["o"]["k"], out["t"]["b"][0], out["s"][0]["v"][0],
                  out["s"][0]["w"][0], out["s"][1]["v"][0], out["s"][2]["u"][0], out["n"][0],
                  out["r"][0]):
        inner.append(9)
    assert (b, o) == (base(), over())


def test_only_two_named_lists_or_two_tables_merge():
    assert merge({"a": 1}, [1]) == [1] and merge([1], {"a": 1}) == {"a": 1}
    assert merge([{"name": "x", "v": 1}], [1, 2]) == [1, 2]
    assert merge([1, 2], [{"name": "x"}]) == [{"name": "x"}]
    # each inherited entry takes one entry of the same name; the others are appended, as
    # they stand in a file that extends nothing (where the plan refuses an enabled pair)
    assert merge([{"name": "a"}], [{"name": "b", "v": 1}, {"name": "b", "w": 2}]) == [
        {"name": "a"}, {"name": "b", "v": 1}, {"name": "b", "w": 2}]
    assert merge([{"name": "a", "v": 0}, {"name": "a", "enabled": False}],
                 [{"name": "a", "v": 1}, {"name": "a", "v": 2}, {"name": "a", "v": 3}]) == [
        {"name": "a", "v": 1}, {"name": "a", "enabled": False, "v": 2}, {"name": "a", "v": 3}]


@pytest.mark.parametrize("disabled_first", [True, False])
def test_a_name_shared_by_a_disabled_entry_means_the_enabled_one(disabled_first):
    off, on = {"name": "kd", "use": "kd_a", "enabled": False}, {"name": "kd", "use": "kd_b"}
    entries = [off, on] if disabled_first else [on, off]
    where = entries.index(on)
    data = {"s": [dict(e) for e in entries]}
    apply_override(data, ["s", "kd", "weight"], 0.5)
    assert data["s"][where] == {**on, "weight": 0.5} and data["s"][1 - where] == off
    merged = merge({"s": [dict(e) for e in entries]}, {"s": [{"name": "kd", "weight": 2}]})
    assert merged["s"][where] == {**on, "weight": 2} and merged["s"][1 - where] == off
    # only `enabled = false` itself marks the other entry; a lone disabled entry is addressed
    lone = {"s": [{"name": "kd", "enabled": False}, {"name": "x"}]}
    apply_override(lone, ["s", "kd", "enabled"], True)
    assert lone["s"][0] == {"name": "kd", "enabled": True}
    falsy = {"s": [{"name": "kd", "enabled": 0}, {"name": "kd"}]}
    apply_override(falsy, ["s", "kd", "v"], 1)
    assert falsy["s"] == [{"name": "kd", "enabled": 0, "v": 1}, {"name": "kd"}]
    # a name that reads as an index, shared likewise
    numbered = {"s": [{"name": "7", "enabled": False}, {"name": "7"}]}
    apply_override(numbered, ["s", "7", "v"], 1)
    assert numbered["s"] == [{"name": "7", "enabled": False}, {"name": "7", "v": 1}]


def test_a_variant_that_swaps_a_component_under_its_label_is_tuned_by_that_label(tmp_path):
    base = tiny_recipe(teacher_stage(1), stage("student", 1, ["student"], component("ce")))
    write_recipe(base, tmp_path / "base.toml")
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\n[[stages]]\nname = "student"\n'
                     '[[stages.components]]\nname = "ce"\nenabled = false\n'
                     '[[stages.components]]\nname = "ce"\nuse = "label_smoothing"\n')
    recipe = load_recipe(child, ["stages.student.components.ce.weight=0.25"])
    comps = recipe.stages[1].components
    assert [(c.use, c.enabled, c.weight) for c in comps] == [
        ("ce", False, 1.0), ("label_smoothing", True, 0.25)]


def test_a_replace_marker_that_is_not_true_names_its_key_in_a_merge():
    err = _assert_refused(lambda: merge({"s": [{"name": "x", "p": {"a": 1}}]},
                                        {"s": [{"name": "x", "p": {"__replace__": 1}}]}))
    assert (err.key, err.detail) == ("s[0].p.__replace__", "got 1, expected true (the only "
                                                           "value it takes)")
    err = _assert_refused(lambda: strip_replace({"a": [{"b": {"__replace__": "yes"}}]}))
    assert err.key == "a[0].b.__replace__"
    copied = {"a": [[1]]}
    assert strip_replace(copied) == copied and strip_replace(copied)["a"] is not copied["a"]
    assert strip_replace(copied)["a"][0] is not copied["a"][0]


# -- overrides --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "path", "detail"), [
    ("run.x.=1", "run.x.", "override 'run.x.=1': the key path has an empty part"),
    ("a=" + "[" * 2000 + "]" * 2000, "a", "the value nests arrays or tables too deeply"),
    ("run.seed=" + "9" * 4301, "run.seed", "the value is an integer of more than 4,300 digits, "
     "past what Python reads; no recipe value needs one"),
    ("stages[0].epochs=2", "stages[0].epochs", "list entries are addressed with a dot, by index "
     "or by name, not with brackets: write stages.0.epochs"),
    ("stages[s].components[-1].params.x=[1]", "stages[s].components[-1].params.x",
     "list entries are addressed with a dot, by index or by name, not with brackets: write "
     "stages.s.components.-1.params.x"),
])
def test_an_override_that_cannot_be_read_names_its_key(text, path, detail):
    err = _assert_refused(lambda: parse_override(text))
    assert (err.key, err.detail) == (path, detail)


def test_list_entries_are_addressed_from_the_end_by_negative_index():
    data = {"s": [{"name": "a", "v": 0}, {"name": "b", "v": 0}, {"name": "c", "v": 0}]}
    apply_override(data, ["s", "-1", "v"], 1)
    apply_override(data, ["s", "-3", "v"], 3)
    assert [e["v"] for e in data["s"]] == [3, 0, 1]
    err = _assert_refused(lambda: apply_override(data, ["s", "-4", "v"], 1))
    assert (err.key, err.detail) == ("s.-4", "index -4 out of range (length 3)")
    for far in ("9" * 19, "-" + "9" * 19, "9" * 5000):  # past int64, past what int() reads
        err = _assert_refused(lambda far=far: apply_override(data, ["s", far, "v"], 1))
        assert (err.key, err.detail) == (f"s.{far}", f"index {far} out of range (length 3)")
    apply_override(data, ["s", "0" * 18 + "1", "v"], 5)  # 19 digits, one of them significant
    assert [e["v"] for e in data["s"]] == [3, 5, 1]
    plain = {"x": [1, 2]}
    apply_override(plain, ["x", "-2"], 7)
    assert plain == {"x": [7, 2]}
    named = {"s": [{"name": "-1"}, {"name": "z"}]}  # a name that reads as an index
    err = _assert_refused(lambda: apply_override(named, ["s", "-1", "v"], 1))
    assert (err.key, err.detail) == ("s.-1", "'-1' is both an index and the name of entry 0; "
                                             "rename the entry so that its name is not a number")


def test_a_list_of_plain_values_has_no_names_to_suggest():
    err = _assert_refused(lambda: apply_override({"x": [1, 2]}, ["x", "first"], 0))
    assert (err.key, err.detail) == ("x.first",
                                     "no entry named 'first'; entries: none (address them by "
                                     "index)")
    named = {"x": [{"name": "ab"}, {"use": "cd"}]}
    err = _assert_refused(lambda: apply_override(named, ["x", "q"], 0))
    assert err.detail == "no entry named 'q'; entries: ab, cd"


def test_an_override_below_a_value_names_the_path_to_it():
    data = {"a": {"b": 1}}
    err = _assert_refused(lambda: apply_override(data, ["a", "b", "c", "d"], 0))
    assert (err.key, err.detail) == ("a.b.c", "cannot set a key inside a.b = 1, which is not a "
                                              "table")
    listed = {"l": [{"name": "e", "t": 2}]}
    err = _assert_refused(lambda: apply_override(listed, ["l", "e", "t", "u"], 0))
    assert err.key == "l.e.t.u" and err.detail.startswith("cannot set a key inside l.e.t = 2")
    err = _assert_refused(lambda: apply_override({"l": [[1]]}, ["l", "0", "9"], 0))
    assert (err.key, err.detail) == ("l.0.9", "index 9 out of range (length 1)")


def test_an_override_sets_the_value_itself_in_a_list():
    data = {"l": [1, 2]}
    apply_override(data, ["l", "1"], [3, 4])
    assert data == {"l": [1, [3, 4]]}


def test_overrides_are_applied_after_extends_in_load_recipe(tmp_path, good):
    child = tmp_path / "child.toml"
    child.write_text('extends = "good.toml"\n[run]\nseed = 5\n')
    recipe = load_recipe(child, ["run.seed=9", "stages.student.epochs=3"])
    assert recipe.run.seed == 9 and recipe.stages[1].epochs == 3
    assert recipe.source == str(child)
    err = _assert_refused(lambda: load_recipe(child, ["stages.nobody.epochs=3"]))
    assert (err.file, err.key) == (str(child), "stages.nobody")


@pytest.mark.parametrize(("path", "overrides", "message"), [
    (3, (), "load_recipe takes a recipe file's path, not int 3"),
    ("r.toml", "run.seed=1", "load_recipe's overrides take a list, such as ['run.seed=1'], not "
                             "str 'run.seed=1'"),
])
def test_load_recipe_names_what_it_was_given(path, overrides, message):
    err = _assert_refused(lambda: load_recipe(path, overrides))
    assert str(err) == message


# -- plain data -------------------------------------------------------------------------------


def _nested(depth):
    """A table nesting ``depth`` levels of tables below the top one."""
    data = value = {}
    for _ in range(depth):
        value["t"] = {}
        value = value["t"]
    return data


def test_nesting_is_bounded_at_exactly_the_limit():
    check_plain(_nested(MAX_DEPTH - 1))
    err = _assert_refused(lambda: check_plain(_nested(MAX_DEPTH)))
    assert err.key == ".".join(["t"] * MAX_DEPTH) and err.detail == (
        "nested more than 32 tables or arrays deep")
    lists = x = []
    for _ in range(MAX_DEPTH):
        x.append([])
        x = x[0]
    check_plain(lists)  # 33 levels of arrays, the innermost empty: nothing nests in it
    x.append(1)
    err = _assert_refused(lambda: check_plain(lists))
    assert err.key == "[0]" * MAX_DEPTH
    check_plain({"a": [[]] * 3, "b": [{}]})  # empty lists and tables at any depth
    check_plain({"a": False, "b": True, "c": "x"})


@pytest.mark.parametrize(("value", "ok"), [(-(2**63), True), (2**63 - 1, True),
                                           (-(2**63) - 1, False), (2**63, False)])
def test_integers_are_bounded_at_tomls_64_bits(value, ok):
    if ok:
        check_plain({"x": [value]})
        return
    err = _assert_refused(lambda: check_plain({"x": [value]}))
    assert (err.key, err.detail) == (
        "x[0]", f"the integer {value} is outside TOML's 64-bit range [-2**63, 2**63 - 1]")


def test_bad_text_names_the_key_it_sits_at():
    err = _assert_refused(lambda: check_plain({"run": {"name": "a\0b"}}))
    assert err.key == "run.name" and "NUL" in err.detail and "'name'" in err.detail
    err = _assert_refused(lambda: check_plain({"a\0": 1}))
    assert err.key == "a\0"
    err = _assert_refused(lambda: check_plain({"x": "\udcff"}))
    assert (err.key, err.detail) == ("x", "'\\udcff' is not valid UTF-8 text")
    err = _assert_refused(lambda: check_plain(["\0"]))
    assert err.key == "[0]" and err.detail.startswith("'[0]' contains a NUL byte")
    err = _assert_refused(lambda: check_plain("\0"))  # no key path: the value is called "value"
    assert err.key is None and err.detail.startswith("'value' contains a NUL byte")


def test_source_is_not_a_key_and_is_kept_from_the_reader():
    data = tiny_recipe(teacher_stage(1))
    assert recipe_from_dict(data, "here.toml").source == "here.toml"
    err = _assert_refused(lambda: recipe_from_dict({**data, "source": "x"}, "here.toml"))
    assert (err.file, err.key, err.detail) == ("here.toml", "source",
                                               "'source' is not a recipe key")


def test_a_nul_in_text_is_named_by_the_last_part_of_its_key():
    err = _assert_refused(lambda: check_plain({"a": {"b": {"c": "x\0"}}}))
    assert err.key == "a.b.c" and err.detail.startswith("'c' contains a NUL byte")


def test_extends_and_source_cannot_be_set_by_an_override():
    for key in ("extends", "source"):
        err = _assert_refused(lambda key=key: apply_override({}, [key], "x.toml"))
        assert (err.key, err.detail) == (
            key, f"{key} cannot be set with an override; write a recipe file that extends the "
                 "other instead")


def test_load_recipe_names_its_file_where_the_reading_did_not(tmp_path):
    nul = str(tmp_path / "a") + "\0.toml"
    assert _assert_refused(lambda: load_recipe(nul)).file == nul
    path = tmp_path / "r.toml"
    path.write_text("[run]\n__replace__ = 1\n")
    err = _assert_refused(lambda: load_recipe(path))
    assert (err.file, err.key) == (str(path), "run.__replace__")


def test_only_the_first_mebibyte_of_a_recipe_is_ever_read(tmp_path):
    """A file of a terabyte (sparse: no disk used) is refused after reading 1 MiB, not read
    into memory whole."""
    path = tmp_path / "huge.toml"
    with path.open("wb") as fh:
        try:
            fh.truncate(2**40)
        except OSError:
            pytest.skip("this file system refuses a sparse file of a terabyte")
    err = _assert_refused(lambda: read_toml(path))
    assert err.detail == "larger than 1 MiB; a recipe is a few kilobytes of TOML"
