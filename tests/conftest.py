"""Shared fixtures: the default model is loaded once per test session and reused by every engine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/dense_reference.py and friends


@pytest.fixture(scope="session")
def checkpoint():
    from halo.engine.checkpoint import load_checkpoint

    return load_checkpoint()


@pytest.fixture(scope="session")
def dense(checkpoint):
    from dense_reference import DenseReference

    return DenseReference(checkpoint)
