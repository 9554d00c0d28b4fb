"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def shard_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One conversion cache per test run: a segment is converted once, whoever asks."""
    return tmp_path_factory.mktemp("shard-cache")
