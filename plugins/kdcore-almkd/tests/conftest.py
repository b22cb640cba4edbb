"""Shared set-up of the kdcore-almkd tests."""

from __future__ import annotations

from kdcore.testing import quiet_logs  # noqa: F401 (autouse fixtures)
