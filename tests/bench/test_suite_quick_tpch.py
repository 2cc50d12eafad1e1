"""The benchmark suite end to end in `--quick` size over the two TPC-H workloads: every workload under every
system on the real model (fp32, greedy), outputs identical to the serial baseline, sane counters,
report files written. The other half of the workloads: tests/bench/test_suite_quick_agents.py."""

from __future__ import annotations

import pytest
from quick_suite import HALVES, QuickSuiteChecks

pytestmark = pytest.mark.slow


class TestTpchHalf(QuickSuiteChecks):
    WORKLOADS = HALVES["tpch"]


def test_the_two_halves_are_the_whole_suite():
    from bench.generators.workloads import WORKLOADS as ALL

    assert sorted(HALVES["tpch"] + HALVES["agents"] + HALVES["language"]) == sorted(ALL)
