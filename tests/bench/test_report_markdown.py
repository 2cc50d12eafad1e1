"""The suite's Markdown report: what it says of the engine mode and of speculative drafts."""

from __future__ import annotations

from bench import report
from bench.suite_result import Measurement, SuiteResult

COUNTERS = {"llm_calls_executed": 4, "llm_calls_logical": 4, "tool_calls_executed": 0, "tool_calls_logical": 0,
            "prefill_tokens": 40, "cached_tokens": 0, "decode_tokens": 12}


def _result(proposed: int, accepted: int, deterministic: bool | None) -> SuiteResult:
    counters = COUNTERS | {"speculative_proposed": proposed, "speculative_accepted": accepted}
    return SuiteResult(
        config={"deterministic": deterministic, "speculative": "auto" if proposed else None, "seed": 0},
        environment={"cpu": "AVX2"},
        measurements=[Measurement("multi-turn", 3, "serial", 2.0, COUNTERS, 0, 1.0, 1.0),
                      Measurement("multi-turn", 3, "halo", 1.0, counters, 0, 1.0, 1.0)],
    )


def test_the_draft_column_shows_acceptance_only_where_a_system_drafted():
    text = report.markdown(_result(proposed=10, accepted=4, deterministic=True))
    assert "drafts accepted/proposed" in text
    assert "| 4/10 (40%) |" in text
    assert "| 0 | - |" in text  # serial drafted nothing: a dash, not 0/0
    assert "deterministic true, speculative auto." in text
    plain = report.markdown(_result(proposed=0, accepted=0, deterministic=None))
    assert "drafts accepted" not in plain
    assert "deterministic (engine default), speculative (engine default)." in plain
