"""The benchmark suite end to end in `--quick` size over the workloads that use the workflow
language's map, reduce and conditional nodes (per-document-qa: foreach + reduce; ticket-routing: when
and a list output) and over doc-passages (distinct real-text rows: nothing to share; a json_schema node
and a python tool in an llm chain): every system on the real model (fp32, greedy), outputs identical to the serial
baseline, report files written. Their calls per row are not one per node: the baselines agree with
each other on what ran, and halo runs no more than they do."""

from __future__ import annotations

import pytest
from quick_suite import HALVES, QuickSuiteChecks

pytestmark = pytest.mark.slow


class TestLanguageHalf(QuickSuiteChecks):
    WORKLOADS = HALVES["language"]

    def test_counters_are_sane(self, quick_result) -> None:
        by = {(m.workload, m.system): m.counters for m in quick_result[0].measurements}
        for workload in self.WORKLOADS:
            serial, per_call, opwise, halo = (by[(workload, s)] for s in ("serial", "per-call", "opwise", "halo"))
            # every baseline runs the same calls: skipped branches none, each map element one
            assert serial["llm_calls_executed"] == per_call["llm_calls_executed"] == opwise["llm_calls_executed"] > 0
            assert per_call["prompt_tokens"] == serial["prompt_tokens"] == opwise["prompt_tokens"]
            assert halo["llm_calls_executed"] <= per_call["llm_calls_executed"]
            assert halo["tool_calls_executed"] <= per_call["tool_calls_executed"]
            # logical calls are the batch's plain calls, the same for every system: what serial executes
            for c in (serial, per_call, opwise, halo):
                assert c["llm_calls_logical"] == serial["llm_calls_executed"]
                assert c["tool_calls_logical"] == serial["tool_calls_executed"]
        passages = by[("doc-passages", "halo")]
        # every row distinct: halo runs each of the three llm calls of each row, as the baselines do
        assert passages["llm_calls_executed"] == passages["llm_calls_logical"] == 2 * 3
        routing = by[("ticket-routing", "serial")]
        # two rows: one category call each and exactly one of the three replies (the others skipped)
        assert routing["llm_calls_executed"] == routing["llm_calls_logical"] == 2 * 2
