"""The README's benchmark commands start: each script of bench/ that imports its siblings as `bench.*`
runs as ``python bench/X.py --help`` from outside the checkout (a script's sys.path holds its own folder,
not the checkout, so such an import fails unless the script puts the checkout there itself)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
IMPORTS_BENCH = re.compile(r"^\s*(from bench[. ]|import bench)", re.MULTILINE)


def _scripts() -> list[Path]:
    """The scripts (a ``__main__`` block) that import ``bench.*``: the ones that can break this way."""
    return [p for p in sorted(BENCH.glob("*.py"))
            if "__main__" in (text := p.read_text()) and IMPORTS_BENCH.search(text)]


def test_the_scripts_that_import_bench_are_found() -> None:
    assert {"engine_throughput.py", "batch_invariance.py", "quantized_weights.py"} <= {p.name for p in _scripts()}


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: p.name)
def test_script_starts_from_outside_the_checkout(script: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
