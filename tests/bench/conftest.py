"""Fixtures of the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from quick_suite import SuiteResult, run_quick


@pytest.fixture(scope="class")
def quick_result(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[SuiteResult, Path]:
    """The `--quick` suite over the workloads of the requesting `QuickSuiteChecks` class, run once."""
    return run_quick(tmp_path_factory.mktemp("bench"), request.cls.WORKLOADS)
