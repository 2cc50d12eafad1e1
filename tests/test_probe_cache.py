"""Start-up probes remembered per machine (engine/probe_cache.py): measured once, read later, damage re-measures."""

from __future__ import annotations

import json
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
    # the verdict is this CPU's (an AVX2-only one packs inexactly, so it does not pack): whatever it is,
    # it is measured once per shape and then remembered
    verdict = linear.Linear(torch.randn(96, 64).bfloat16(), pack=True).packed
    for _ in range(2):  # more layers of one shape: no new check
        assert linear.Linear(torch.randn(96, 64).bfloat16(), pack=True).packed == verdict
    assert checks == [(96, 64)]
    linear.packing_exact.cache_clear()  # a new process: the verdict comes from the cache dir
    assert linear.Linear(torch.randn(96, 64).bfloat16(), pack=True).packed == verdict
    assert checks == [(96, 64)]
    linear.packing_exact.cache_clear()


# ---- speed figures: the best young measurement counts; a busy or old one is measured again --------------
class Machine:
    """The clock and the load average the speed records read (the environment, not the cache under test)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now, self.load = 1_000_000.0, 0.1
        monkeypatch.setattr(probe_cache, "_now", lambda: self.now)
        monkeypatch.setattr(probe_cache, "load_per_cpu", lambda: self.load)


def _probe(measured: list[float], value: float) -> probe_cache.SpeedFigure:
    def measure() -> list[float]:
        measured.append(value)
        return [value, 2 * value]

    return probe_cache.remembered_speed("speed", {"threads": 2}, measure, score=lambda v: v[0] + v[1])


def test_a_speed_is_measured_once_while_it_is_young_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    machine, measured = Machine(monkeypatch), []
    first = _probe(measured, 100.0)
    assert first.value == [100.0, 200.0] and first.measured_now and first.stale is None
    machine.now += probe_cache.MAX_AGE_S - 1
    again = _probe(measured, 50.0)
    assert again.value == [100.0, 200.0] and not again.measured_now and again.stale is None
    assert measured == [100.0]


def test_a_speed_older_than_the_age_limit_is_measured_again(monkeypatch: pytest.MonkeyPatch) -> None:
    machine, measured = Machine(monkeypatch), []
    _probe(measured, 100.0)
    machine.now += probe_cache.MAX_AGE_S + 1
    figure = _probe(measured, 80.0)  # the old figure is gone: the new one counts, even though lower
    assert figure.value == [80.0, 160.0] and figure.measured_now and measured == [100.0, 80.0]


def test_a_figure_taken_under_load_is_stale_until_a_quieter_start_measures_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine, measured = Machine(monkeypatch), []
    machine.load = 1.9
    busy = _probe(measured, 22.0)
    assert busy.value == [22.0, 44.0] and busy.stale is not None and "under load 1.9/CPU" in busy.stale
    machine.now += 10
    machine.load = 0.2  # quieter, but measured moments ago: not again yet
    assert _probe(measured, 99.0).stale is not None and measured == [22.0]
    machine.now += probe_cache.RETAKE_AFTER_S
    machine.load = 1.9  # time for another try, but as busy as then: nothing to gain
    assert _probe(measured, 21.0).stale is not None and measured == [22.0]
    machine.load = 0.2
    quiet = _probe(measured, 100.0)
    assert quiet.value == [100.0, 200.0] and quiet.measured_now and quiet.stale is None and measured == [22.0, 100.0]
    assert _probe(measured, 100.0).stale is None and measured == [22.0, 100.0]  # and then read


def test_a_measurement_far_below_an_earlier_one_does_not_replace_it(monkeypatch: pytest.MonkeyPatch) -> None:
    machine, measured = Machine(monkeypatch), []
    machine.load = 0.9
    _probe(measured, 100.0)  # busy: due again at a quieter start
    machine.now += probe_cache.RETAKE_AFTER_S + 1
    machine.load = 0.6  # quieter than then, still busy: measured again, and disturbed more
    figure = _probe(measured, 30.0)
    assert measured == [100.0, 30.0]
    assert figure.value == [100.0, 200.0] and not figure.measured_now  # the better of the two is kept


def test_an_old_format_or_damaged_speed_record_is_measured_again(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Machine(monkeypatch)
    measured: list[float] = []
    _probe(measured, 100.0)
    (stored,) = (cache_dir / "probe").glob("speed-*.json")
    ident = json.loads(stored.read_text())["ident"]
    stored.write_text(json.dumps({"ident": ident, "value": [22.0, 49.0]}))  # a record of the earlier format
    assert _probe(measured, 90.0).value == [90.0, 180.0]
    stored.write_text(json.dumps({"ident": ident, "measurements": [{"value": [1, 2]}, "x"]}))
    assert _probe(measured, 95.0).value == [95.0, 190.0]
    assert measured == [100.0, 90.0, 95.0]


def test_the_dtype_choice_says_when_its_probe_is_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    from halo.engine import dtype_probe

    machine = Machine(monkeypatch)
    monkeypatch.setattr(dtype_probe, "_measure_probe", lambda: (22.0, 49.0))
    machine.load = 1.5
    dtype_probe._probe.cache_clear()
    try:
        choice = dtype_probe.choose_dtype("auto")
        assert choice.name == "bf16" and choice.probe_stale is not None
        assert choice.reason.startswith("auto: bf16 49 > fp32 22 GFLOP/s (stale: probe taken under load 1.5/CPU")
    finally:
        dtype_probe._probe.cache_clear()  # later tests read this machine's own figures again
