"""`bench/engine_throughput.py --vs-llama-cpp PYTHON`: the llama.cpp side starts and explains itself without
llama-cpp-python (always), and, when $HALO_LLAMA_CPP_PYTHON names a venv with llama-cpp-python, a real
side-by-side run on the default GGUF prints and records both sides' figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LLAMA_PYTHON = os.environ.get("HALO_LLAMA_CPP_PYTHON", "").strip()


def test_the_driver_explains_itself_without_llama_cpp(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "llama_cpp_baseline.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--model" in done.stdout and "--threads" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not LLAMA_PYTHON, reason="needs HALO_LLAMA_CPP_PYTHON: a venv's python with llama-cpp-python")
def test_side_by_side_on_the_default_gguf(tmp_path: Path) -> None:
    out = tmp_path / "vs.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "engine_throughput.py"), "--vs-llama-cpp",
                           LLAMA_PYTHON, "--json", str(out)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    for side in ("halo", "llama_cpp"):
        assert figures[side]["prefill_tok_s"] > 0 and figures[side]["decode_b1_tok_s"] > 0
    assert "halo/llama.cpp" in done.stdout
