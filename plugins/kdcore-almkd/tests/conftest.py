"""Shared set-up of the kdcore-almkd tests."""

from __future__ import annotations

import pytest
from loguru import logger


@pytest.fixture(autouse=True)
def _quiet_logs():
    """Keep loguru's INFO lines out of test output."""
    logger.remove()
    yield
