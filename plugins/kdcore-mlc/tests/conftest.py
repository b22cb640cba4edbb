"""Shared set-up of the kdcore-mlc tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kdcore.testing import one_thread, quiet_logs  # noqa: F401 (autouse fixtures)
from kdcore_mlc.mlc import MLC


@pytest.fixture
def mlc_instances(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MLC]]:
    """Every ``mlc`` component set up while the test runs, in order (a component sees no other
    component; a test that recomputes MLC's labels independently needs its network)."""
    seen: list[MLC] = []
    setup = MLC.setup

    def recording_setup(self: MLC, ctx) -> None:
        setup(self, ctx)
        seen.append(self)

    monkeypatch.setattr(MLC, "setup", recording_setup)
    yield seen
