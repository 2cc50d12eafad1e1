"""The benchmark suite end to end in `--quick` size over the two TPC-H workloads: every workload under every
system on the real model (fp32, greedy), outputs identical to the serial baseline, sane counters,
report files written. The other half of the workloads: tests/bench/test_suite_quick_agents.py."""

from __future__ import annotations

import pytest
from quick_suite import (
    HALVES,
    check_counters_are_sane,
    check_every_workload_runs_under_every_system,
    check_outputs_are_identical_to_serial_in_fp32_greedy,
    check_report_files_are_written,
    run_quick,
)

pytestmark = pytest.mark.slow
WORKLOADS = HALVES["tpch"]


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    return run_quick(tmp_path_factory.mktemp("bench"), WORKLOADS)


def test_every_workload_runs_under_every_system(quick_result):
    check_every_workload_runs_under_every_system(quick_result[0], WORKLOADS)


def test_outputs_are_identical_to_serial_in_fp32_greedy(quick_result):
    check_outputs_are_identical_to_serial_in_fp32_greedy(quick_result[0])


def test_counters_are_sane(quick_result):
    check_counters_are_sane(quick_result[0], quick_result[1], WORKLOADS)


def test_report_files_are_written(quick_result):
    check_report_files_are_written(quick_result[1], WORKLOADS)


def test_the_two_halves_are_the_whole_suite():
    from bench.generators.workloads import WORKLOADS as ALL

    assert sorted(HALVES["tpch"] + HALVES["agents"]) == sorted(ALL)
