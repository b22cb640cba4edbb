"""kdcore.cli_files on its own: which paths count as a run's own files, how outputs are written,
and what each refusal says."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kdcore.cli_files import (
    RUN_FILES,
    check_output,
    output_dir,
    output_file,
    reading,
    write_bytes,
    write_output,
)
from kdcore.errors import KdcoreError, NotInHistory

MARKERS = ("history.h5", "checkpoint.pt", "summary.json", "recipe.toml")


def _run_dir(root: Path, marker: str) -> Path:
    run = root / "run"
    run.mkdir()
    (run / marker).write_text("x")
    return run


@pytest.mark.parametrize("marker", MARKERS)
def test_any_one_of_a_runs_files_makes_its_folder_a_run(tmp_path, marker):
    run = _run_dir(tmp_path, marker)
    for name in sorted(RUN_FILES):
        with pytest.raises(KdcoreError, match=f"is a file of the run in {run}; write the "
                                              f"output elsewhere"):
            check_output(run / name)
    (run / "models").mkdir()
    with pytest.raises(KdcoreError, match="is a file of the run"):
        check_output(run / "models" / "student.pt")
    with pytest.raises(KdcoreError) as info:
        output_dir(run / "summary.json")
    assert str(info.value) == (f"{run / 'summary.json'} is a file of the run in {run}; write "
                               f"the output elsewhere")
    # anything else in a run's folder is the user's to write
    assert check_output(run / "table.csv") == (run / "table.csv").resolve()
    assert output_dir(run / "plots") == run / "plots"


def test_the_same_names_outside_a_run_are_free(tmp_path):
    assert check_output(tmp_path / "history.h5") == (tmp_path / "history.h5").resolve()
    (tmp_path / "models").mkdir()
    assert check_output(tmp_path / "models" / "x.pt") == (tmp_path / "models" / "x.pt").resolve()
    assert output_dir(tmp_path / "summary.json").is_dir()


def test_a_run_file_reached_through_a_symlink_is_refused(tmp_path):
    run = _run_dir(tmp_path, "history.h5")
    (tmp_path / "link.csv").symlink_to(run / "history.h5")
    with pytest.raises(KdcoreError, match="is a file of the run"):
        check_output(tmp_path / "link.csv")


def test_refusals_say_what_the_system_said(tmp_path):
    with pytest.raises(KdcoreError) as info:
        check_output(tmp_path / ("x" * 300))
    assert str(info.value) == f"cannot write {tmp_path / ('x' * 300)}: File name too long"
    with pytest.raises(KdcoreError) as info:
        check_output(tmp_path / "no" / "out.csv")
    assert str(info.value) == f"cannot write {tmp_path / 'no' / 'out.csv'}: no folder " \
                              f"{tmp_path / 'no'}"
    (tmp_path / "file").write_text("")
    with pytest.raises(KdcoreError) as info:
        output_dir(tmp_path / "file" / "plots")
    assert str(info.value) == f"cannot make the folder {tmp_path / 'file' / 'plots'}: " \
                              f"Not a directory"
    with pytest.raises(KdcoreError) as info:
        write_bytes(tmp_path / "file" / "a.png", b"png")
    assert str(info.value) == f"cannot write {tmp_path / 'file' / 'a.png'}: no folder " \
                              f"{tmp_path / 'file'}"
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(KdcoreError) as info:
        check_output(tmp_path / "loop" / "x.csv")
    assert str(info.value).startswith(f"cannot write {tmp_path / 'loop' / 'x.csv'}: ")
    assert "None" not in str(info.value)
    with pytest.raises(KdcoreError) as info:  # resolve's error has no strerror
        output_dir(tmp_path / "loop" / "plots")
    assert str(info.value).startswith(f"cannot make the folder {tmp_path / 'loop' / 'plots'}: ")
    assert "None" not in str(info.value)


def test_output_dir_makes_the_folder_and_its_parents_and_takes_an_existing_one(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    assert output_dir(deep) == deep and deep.is_dir()
    assert output_dir(deep) == deep


def test_an_output_is_written_whole_in_place_of_an_older_one(tmp_path):
    out = tmp_path / "t.csv"
    out.write_text("old\n")
    write_output(out, lambda handle: handle.write("a,b\r\n1,2\n"), newline="")
    assert out.read_bytes() == b"a,b\r\n1,2\n"  # newline="" keeps what was written
    write_output(out, lambda handle: handle.write("x\n"))
    assert out.read_text() == "x\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_an_output_that_fails_part_way_leaves_the_older_one_and_no_temporary(tmp_path):
    out = tmp_path / "t.csv"
    out.write_text("old\n")

    def fails(handle):
        handle.write("half")
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(KdcoreError, match=f"cannot write {out}: Input/output error"):
        write_output(out, fails)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_a_device_is_written_directly_not_replaced(tmp_path):
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null")
    with output_file(Path("/dev/null")) as handle:
        handle.write("gone")
    assert Path("/dev/null").exists() and not Path("/dev/null").is_file()


def test_an_output_over_a_directory_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(KdcoreError, match=f"cannot write {tmp_path / 'd'}: "):
        write_output(tmp_path / "d", lambda handle: handle.write("x"))
    assert (tmp_path / "d").is_dir()


def test_write_bytes_writes_them(tmp_path):
    write_bytes(tmp_path / "a.png", b"\x89PNG")
    assert (tmp_path / "a.png").read_bytes() == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary left


def test_write_bytes_never_writes_through_a_link_to_a_run_file(tmp_path):
    """`report --plots` wrote a figure through a link named like it, over history.h5."""
    run = _run_dir(tmp_path, "history.h5")
    before = (run / "history.h5").read_bytes()
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "test_acc.png").symlink_to(run / "history.h5")
    with pytest.raises(KdcoreError, match="is a file of the run"):
        write_bytes(plots / "test_acc.png", b"\x89PNG")
    assert (run / "history.h5").read_bytes() == before
    # a link to any other file is replaced by the figure, the file it named left as it was
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    (plots / "curve.png").symlink_to(other)
    write_bytes(plots / "curve.png", b"\x89PNG")
    assert not (plots / "curve.png").is_symlink()
    assert (plots / "curve.png").read_bytes() == b"\x89PNG" and other.read_text() == "mine"


@pytest.mark.parametrize("exc,message", [
    (OSError(errno.ENAMETOOLONG, "File name too long", "/r/xx"),
     "cannot read /r/xx: File name too long"),
    (OSError("Unable to synchronously open file (bad superblock)"),
     "cannot read the run's files (Unable to synchronously open file (bad superblock))"),
    (KeyError("strings"), "cannot read the run's files as a kdcore run's; one may be damaged "
                          "(KeyError: 'strings')"),
    (ValueError("a\n  b"), "cannot read the run's files as a kdcore run's; one may be damaged "
                           "(ValueError: a b)"),
])
def test_reading_turns_a_damaged_runs_errors_into_one_line(exc, message):
    @reading
    def command():
        raise exc

    with pytest.raises(KdcoreError) as info:
        command()
    assert str(info.value) == message


def test_reading_passes_results_and_other_errors_through():
    assert reading(lambda x: x + 1)(1) == 2
    with pytest.raises(KdcoreError, match="^mine$"):
        reading(lambda: (_ for _ in ()).throw(KdcoreError("mine")))()
    # a name the history lacks is the user's, not damage (NotInHistory is a KeyError too)
    with pytest.raises(NotInHistory) as info:
        reading(lambda: (_ for _ in ()).throw(NotInHistory("no column 'x' in h.h5")))()
    assert str(info.value) == "no column 'x' in h.h5"


def test_write_bytes_that_fails_says_what_the_system_said_and_keeps_the_older_file(
        tmp_path, monkeypatch):
    out = tmp_path / "a.png"
    out.write_bytes(b"old")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(KdcoreError, match=f"^cannot write {out}: No space left on device$"):
        write_bytes(out, b"new")
    monkeypatch.undo()
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.png"]


@pytest.mark.parametrize("option", ["--out", "--csv"])
def test_an_empty_path_is_refused_by_the_path_type_naming_the_option(option):
    import click
    from click.testing import CliRunner

    from kdcore.cli_files import GivenPath

    @click.command()
    @click.option(option, "value", type=GivenPath(path_type=Path))
    def command(value):
        click.echo(repr(value))

    result = CliRunner().invoke(command, [option, ""])
    assert result.exit_code == 2
    assert (f"Invalid value for '{option}': an empty path; name a file or folder ('.' for this "
            "one)") in result.output
    ok = CliRunner().invoke(command, [option, "x"])
    assert ok.exit_code == 0 and ok.output == f"{Path('x')!r}\n"  # click.Path's conversion
    assert CliRunner().invoke(command, [option, " "]).output == f"{Path(' ')!r}\n"
