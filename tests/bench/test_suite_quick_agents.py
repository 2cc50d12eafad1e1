"""The benchmark suite end to end in `--quick` size over the retrieval, reasoning, voting and
multi-turn workloads: every workload under every system on the real model (fp32, greedy), outputs
identical to the serial baseline, sane counters, report files written. The TPC-H half:
tests/bench/test_suite_quick_tpch.py."""

from __future__ import annotations

import pytest
from quick_suite import HALVES, QuickSuiteChecks

pytestmark = pytest.mark.slow


class TestAgentsHalf(QuickSuiteChecks):
    WORKLOADS = HALVES["agents"]
