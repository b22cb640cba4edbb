"""The names of what a history holds besides its ledger: metrics (``/metrics/<name>``) and
per-run arrays (``/data/<name>``). Each is an HDF5 path, so a name is a path of named parts
(``a/b``: ``b`` in a folder ``a``), and one cannot be another's folder; the ``/data`` names
the engine writes are its own."""

from __future__ import annotations

from typing import Any

#: ``/data``'s digest of each training sample's input (:mod:`kdcore.data.digest`), compared
#: on resume, not a value to read or export
INPUT_DIGEST = "input_digest"
#: ``/data``'s size in bytes of each training sample's image file, for a split streamed from
#: files (which keeps no digest: reading every file at every start would cost an epoch)
FILE_SIZE = "file_size"
#: the constants kept only for ``--resume`` to compare
RESUME_CHECKS = (INPUT_DIGEST, FILE_SIZE)
#: the ``/data`` entries the engine writes (``test_confusion`` a folder), which a component's
#: ``record_data`` may not replace: resume, ``inspect`` and ``label-issues`` read them
ENGINE_DATA = ("noisy_label", "clean_label", "clean_mask", "sample_id", "transition_matrix",
               "test_confusion", *RESUME_CHECKS)


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a metric or a ``/data`` array, or None."""
    if not isinstance(name, str):
        return f"{type(name).__name__} {name!r:.60} is not a string"
    if "\0" in name or any(part in ("", ".", "..") for part in name.split("/")):
        return f"{name!r} is not a path of named parts (a/b/c)"
    return None


def folder_clash(name: str, names: Any) -> str | None:
    """The first of ``names`` that is ``name``'s folder or has ``name`` as its folder."""
    return next((other for other in names
                 if other.startswith(name + "/") or name.startswith(other + "/")), None)


def check_new_metric(name: str, metrics: Any) -> None:
    """Refuse metric ``name``, first written now, when it is the folder of a metric of earlier
    rows (``metrics``) or lies in one's place: one line, not h5py's "name already exists"."""
    from kdcore.failures import RunFailed

    other = folder_clash(name, metrics)
    if other is not None:
        raise RunFailed(f"metrics '{other}' and '{name}' cannot both be kept: the history keeps "
                        "a name with '/' as a folder of metrics; the file is as before this row")


def check_new_column(name: str, columns: Any) -> None:
    """Refuse ledger column ``name``, first written now, when it is the folder of a column the
    history keeps (``columns``) or lies in one's place: one line, not h5py's "Incompatible
    object already exists" (a selector that returned one mask for every model in one stage,
    ``select/<name>``, and one per model in another, ``select/<name>/<role>``)."""
    from kdcore.failures import RunFailed

    other = folder_clash(name, columns)
    if other is not None:
        raise RunFailed(f"ledger columns '{other}' and '{name}' cannot both be kept: the history "
                        "keeps a name with '/' as a folder of columns (give the component that "
                        "writes one of them another label); the file is as before this row")


#: the ledger's data columns: what the dataset says, which no component rewrites
READ_ONLY_COLUMNS = ("noisy_label", "clean_label", "clean_mask")


def declared_column_problem(name: str, others: Any, roles: Any = ()) -> str | None:
    """Why a column a component declares in ``writes`` cannot be a ledger column beside
    ``others`` (the other columns the run may write), or None; the history keeps each
    column at ``/ledger/<name>``. A hook's per-role column (``loss/<name>/<role>``, of one of
    ``roles``) is written only where its plain one is not: no clash with it."""
    problem = name_problem(name)
    if problem:
        return problem
    if name in READ_ONLY_COLUMNS:
        return f"'{name}' is the data's ({', '.join(READ_ONLY_COLUMNS)} are read only)"
    other = folder_clash(name, (o for o in others if not _per_role(o, roles)))
    if other:
        return (f"'{name}' beside '{other}': the history keeps a name with '/' as a folder "
                "of columns")
    return None


def _per_role(column: str, roles: Any) -> bool:
    parts = column.split("/")
    return len(parts) == 3 and parts[0] in ("select", "weight", "loss") and parts[2] in roles


__all__ = ["ENGINE_DATA", "FILE_SIZE", "INPUT_DIGEST", "READ_ONLY_COLUMNS", "RESUME_CHECKS",
           "check_new_column", "check_new_metric", "declared_column_problem", "folder_clash",
           "name_problem"]
