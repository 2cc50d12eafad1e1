"""The `--quick` benchmark suite run and its checks, shared by the two test files that each run half of
the workloads (test_suite_quick_tpch.py, test_suite_quick_agents.py): two files, so the suite's two
halves run on two cores under pytest-xdist instead of one after the other."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the suite lives in bench/, outside the installed package

from bench.suite import QUICK, SuiteConfig, run_suite  # noqa: E402
from bench.suite_result import SuiteResult  # noqa: E402
from bench.systems import SYSTEMS  # noqa: E402

# Two rows, not --quick's three: a repeated prefix still appears (the workloads' shared prompts and
# tool calls), and the fidelity and counter checks hold the same; the third row only cost time.
ROWS = 2
# The halves, each about half of the suite's time: the TPC-H workloads make the most calls per row.
HALVES = {
    "tpch": ["tpch-trident", "tpch-fanout"],
    "agents": ["multi-step-retrieval", "adversarial-reasoning", "multi-agent-voting", "multi-turn"],
    # foreach/reduce, when, and distinct real-text rows (json_schema + a python tool): test_suite_quick_language.py
    "language": ["per-document-qa", "ticket-routing", "doc-passages"],
}


def run_quick(folder: Path, workloads: list[str]) -> tuple[SuiteResult, Path]:
    config = SuiteConfig(
        workloads=workloads,
        rows=[ROWS],
        systems=list(SYSTEMS),
        dtype="fp32",
        out=folder / "results",
        scale_factor=QUICK["scale_factor"],
        max_tokens=QUICK["max_tokens"],
        api_latency_s=QUICK["api_latency_s"],
        data_dir=folder / "data",
        quick=True,
    )
    return run_suite(config), folder / "results"


def check_every_workload_runs_under_every_system(result: SuiteResult, workloads: list[str]) -> None:
    seen = {(m.workload, m.system) for m in result.measurements}
    assert seen == {(w, s) for w in workloads for s in SYSTEMS}


def check_outputs_are_identical_to_serial_in_fp32_greedy(result: SuiteResult) -> None:
    assert all(e["dtype"] == "fp32" for e in result.engines.values())
    mismatched = [(m.workload, m.system) for m in result.measurements if m.fidelity_vs_serial != 1]
    assert mismatched == []
    assert [(m.workload, m.system) for m in result.measurements if m.row_errors] == []


def _llm_node_ids(path: Path) -> set[str]:
    from halo.spec import Workflow

    return {n.id for n in Workflow.from_yaml(path).graph.nodes if n.kind == "llm"}


def check_counters_are_sane(result: SuiteResult, folder: Path, workloads: list[str]) -> None:
    by = {(m.workload, m.system): m.counters for m in result.measurements}
    for workload in workloads:
        serial, per_call, opwise, halo = (by[(workload, s)] for s in ("serial", "per-call", "opwise", "halo"))
        for c in (serial, per_call, opwise):  # the baselines run every call of every row, no sharing
            assert c["llm_calls_executed"] == c["llm_calls_logical"] > 0
            assert c["tool_calls_executed"] == c["tool_calls_logical"]
        assert halo["llm_calls_executed"] <= per_call["llm_calls_executed"]
        assert halo["tool_calls_executed"] <= per_call["tool_calls_executed"]
        assert serial["cached_tokens"] == 0  # its prefix cache is cleared before every call
        assert per_call["prompt_tokens"] == serial["prompt_tokens"] == opwise["prompt_tokens"]
        for c in (serial, per_call, opwise, halo):
            assert c["prefill_tokens"] + c["cached_tokens"] >= c["prompt_tokens"] > 0
            assert c["wall_s"] > 0
            assert c["speculative_proposed"] == c["speculative_accepted"] == 0  # the default: no drafts
        # halo's timeline summary: every llm node of the workflow, spans inside the run's wall time
        llm_spans = {k.split(":", 1)[1] for k in halo["node_spans"] if k.startswith("llm:")}
        assert llm_spans and llm_spans <= _llm_node_ids(folder / "workloads" / f"{workload}.yaml")
        for instances, start, end in halo["node_spans"].values():
            assert instances >= 1 and 0 <= start <= end <= halo["wall_s"]


def check_report_files_are_written(folder: Path, workloads: list[str]) -> None:
    data = json.loads((folder / "results.json").read_text())
    assert len(data["measurements"]) == len(workloads) * len(SYSTEMS)
    assert data["environment"]["cpu"]
    table = (folder / "results.md").read_text()
    assert all(w in table for w in workloads) and "Geometric mean" in table
    assert "## Where halo's time goes" in table
    for name in ("wall_time.png", "savings.png"):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (folder / "workloads").glob("*.yaml")) == sorted(f"{w}.yaml" for w in workloads)


class QuickSuiteChecks:
    """The tests of one half: a test file subclasses this as `Test...` and names its WORKLOADS."""

    WORKLOADS: ClassVar[list[str]] = []  # the `quick_result` fixture (tests/bench/conftest.py) runs these

    def test_every_workload_runs_under_every_system(self, quick_result) -> None:
        check_every_workload_runs_under_every_system(quick_result[0], self.WORKLOADS)

    def test_outputs_are_identical_to_serial_in_fp32_greedy(self, quick_result) -> None:
        check_outputs_are_identical_to_serial_in_fp32_greedy(quick_result[0])

    def test_counters_are_sane(self, quick_result) -> None:
        check_counters_are_sane(quick_result[0], quick_result[1], self.WORKLOADS)

    def test_report_files_are_written(self, quick_result) -> None:
        check_report_files_are_written(quick_result[1], self.WORKLOADS)
