"""Shared set-up of the kdcore-almkd tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from kdcore.testing import one_thread, quiet_logs  # noqa: F401 (autouse fixtures)


@pytest.fixture(scope="session")
def reference() -> ModuleType:
    """The independent NumPy reference of the released update rules (``reference.py``)."""
    spec = importlib.util.spec_from_file_location("almkd_reference",
                                                  Path(__file__).parent / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
