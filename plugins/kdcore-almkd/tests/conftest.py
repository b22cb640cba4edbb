"""Shared set-up of the kdcore-almkd tests."""

from __future__ import annotations

from kdcore.testing import one_thread, quiet_logs  # noqa: F401 (autouse fixtures)
