"""Start-up probes remembered per machine (engine/probe_cache.py): measured once, read later, damage re-measures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from halo.engine import linear, probe_cache


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_a_result_is_measured_once_and_then_read(cache_dir: Path) -> None:
    calls: list[int] = []

    def measure() -> list[float]:
        calls.append(1)
        return [1.5, 2.5]

    assert probe_cache.remembered("demo", {"threads": 2}, measure) == [1.5, 2.5]
    assert probe_cache.remembered("demo", {"threads": 2}, measure) == [1.5, 2.5]
    assert len(calls) == 1
    assert probe_cache.remembered("demo", {"threads": 3}, measure) == [1.5, 2.5]  # another key: measured
    assert len(calls) == 2
    assert len(list((cache_dir / "probe").glob("demo-*.json"))) == 2


def test_a_damaged_result_is_measured_again(cache_dir: Path) -> None:
    probe_cache.remembered("demo", {}, lambda: True)
    (stored,) = (cache_dir / "probe").glob("demo-*.json")
    stored.write_text("{not json")
    assert probe_cache.remembered("demo", {}, lambda: False) is False
    assert probe_cache.remembered("demo", {}, lambda: True) is False  # the re-measured value was stored


@pytest.mark.skipif(
    not linear.packing_available(torch.device("cpu"), torch.bfloat16), reason="this torch build cannot pre-pack bf16"
)
def test_the_packing_verdict_is_remembered_per_shape(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[tuple[int, ...]] = []
    check = linear._check_packing

    def counted(shape: tuple[int, ...], dtype: torch.dtype, with_bias: bool) -> bool:
        checks.append(shape)
        return check(shape, dtype, with_bias)

    monkeypatch.setattr(linear, "_check_packing", counted)
    linear.packing_exact.cache_clear()
    for _ in range(3):  # three layers of one shape: one check
        assert linear.Linear(torch.randn(96, 64).bfloat16(), pack=True).packed
    assert checks == [(96, 64)]
    linear.packing_exact.cache_clear()  # a new process: the verdict comes from the cache dir
    assert linear.Linear(torch.randn(96, 64).bfloat16(), pack=True).packed
    assert checks == [(96, 64)]
    linear.packing_exact.cache_clear()
