"""`halo bench --online` in miniature: one workload, two low rates, a few seconds each, against both targets;
no query lost, no 5xx, outputs equal `app.run` in fp32 (epochs overlapping, chat on the workflow's engine),
distinct rows by default, report files written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the suite lives in bench/, outside the installed package

from bench.online.sweep import TARGETS, OnlineConfig, run_online  # noqa: E402

pytestmark = pytest.mark.slow


def test_online_sweep_loses_nothing_and_writes_its_report(tmp_path):
    config = OnlineConfig(
        workloads=["multi-agent-voting"],
        rates=[1.0, 2.0],
        duration_s=3.0,
        drain_s=30.0,
        dtype="fp32",
        out=tmp_path / "results",
        max_tokens=4,
        data_dir=tmp_path / "data",
    )
    result = run_online(config)

    assert {(c.target, c.result.offered_rate) for c in result.cells} == {(t, r) for t in TARGETS for r in (1.0, 2.0)}
    for cell in result.cells:
        r = cell.result
        assert r.sent >= 1 and r.completed == r.sent, (cell.target, r)
        assert r.lost == r.server_errors == r.client_errors == 0
        assert len(r.latencies_s) == r.completed and all(t > 0 for t in r.latencies_s)
    assert result.output_check["multi-agent-voting"] == {t: 1.0 for t in TARGETS}

    folder = tmp_path / "results"
    data = json.loads((folder / "online.json").read_text())
    assert len(data["cells"]) == 4 and set(data["saturation"]["multi-agent-voting"]) == {*TARGETS, "ratio"}
    distinct, total = data["environment"]["distinct_rows"]["multi-agent-voting"].split(" of ")
    assert distinct == total  # rows with few duplicates: the ratio measures serving, not deduplication
    assert "Saturation throughput" in (folder / "online.md").read_text()
    assert (folder / "throughput.png").read_bytes()[:4] == b"\x89PNG"


def test_online_rows_flag_picks_the_row_mix_and_the_report_names_it():
    import argparse

    from bench.online import report
    from bench.online.online_result import OnlineResult
    from bench.suite import add_arguments, online_config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert online_config_from_args(parser.parse_args(["--online"])).rows == "distinct"
    config = online_config_from_args(parser.parse_args(["--online", "--online-rows", "workload"]))
    assert config.rows == "workload"
    with pytest.raises(SystemExit):
        parser.parse_args(["--online", "--online-rows", "some"])
    result = OnlineResult(
        config={"rows": "workload", "dtype": "auto", "duration_s": 1.0, "drain_s": 1.0, "seed": 0},
        environment={"cpu": "x", "started": "now", "distinct_rows": {"multi-turn": "24 of 648"}},
    )
    assert "Rows: as the workload generator makes them, repeats included; distinct rows sent of rows prepared: " \
        "multi-turn 24 of 648" in report.markdown(result)
