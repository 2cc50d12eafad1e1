"""LLM latency curves: JSON round trip, default-with-warning, fit, and predictions against the real engine."""

from __future__ import annotations

import warnings

import pytest
from halo.plan.cost import (
    DecodeSample,
    LatencyCurves,
    PrefillSample,
    ProfileMissingWarning,
    WeightsProfileMissingWarning,
    fit_latency_curves,
    load_curves,
    profile_path,
    save_curves,
)
from halo.runtime.engine_profiler import ProfileGrid

CURVES = LatencyCurves(
    model="m",
    dtype="fp32",
    device="cpu",
    threads=2,
    prefill=(0.01, 2e-4, 1e-7),
    decode=(0.02, 3e-4, 1e-6),
    step_tokens=512,
    facts={"cpu": "AVX2"},
)


def test_json_round_trip(tmp_path):
    assert LatencyCurves.from_json(CURVES.to_json()) == CURVES
    loaded = LatencyCurves.load(CURVES.save(tmp_path / "c.json"))
    assert loaded == CURVES and loaded.facts == {"cpu": "AVX2"}


def test_load_and_kv_copy_round_trip_and_price_a_move(tmp_path):
    from dataclasses import replace

    measured = replace(CURVES, model_load_s=3.5, kv_bytes_per_token=46080.0, kv_bytes_per_s=2e9)
    assert LatencyCurves.load(measured.save(tmp_path / "m.json")) == measured
    assert measured.kv_move_s(512, batch=4) == pytest.approx(512 * 4 * 46080 / 2e9)
    assert CURVES.kv_move_s(512) is None and CURVES.model_load_s is None  # older profiles: unmeasured
    assert "KV copy" in measured.describe() and "3.50 s" in measured.describe()


def test_generate_is_prefill_plus_each_decode_step():
    c = CURVES
    expected = c.prefill_s(300, 100, 4) + sum(c.decode_step_s(4, 400 + i) for i in range(1, 20))
    assert c.generate_s(400, 100, 20, batch=4) == pytest.approx(expected)
    assert c.prefill_s(0, 256) == 0.0  # a fully cached prompt costs no prefill
    # 2 x 300 tokens do not fit one 512-token step: two step overheads
    assert c.prefill_s(300, 0, 2) == pytest.approx(2 * 0.01 + 600 * 2e-4 + 600 * 150 * 1e-7)


def test_fit_recovers_exact_coefficients():
    true = LatencyCurves(
        model="m", dtype="bf16", device="cpu", threads=2, prefill=(0.02, 3e-4, 5e-8), decode=(0.015, 1e-4, 2e-7)
    )
    prefill = [
        PrefillSample(n, c, b, true.prefill_s(n, c, b))
        for n, c, b in [(32, 0, 1), (512, 0, 1), (128, 256, 1), (64, 0, 8), (256, 512, 1)]
    ]
    decode = [DecodeSample(b, ctx, true.decode_step_s(b, ctx)) for b, ctx in [(1, 64), (64, 64), (8, 512), (32, 300)]]
    fit = fit_latency_curves(prefill, decode, model="m", dtype="bf16", device="cpu", threads=2)
    assert fit.prefill == pytest.approx(true.prefill, rel=1e-6)
    assert fit.decode == pytest.approx(true.decode, rel=1e-6)
    assert fit.fit_error < 1e-6


def test_missing_profile_warns_and_falls_back_to_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path))
    with pytest.warns(ProfileMissingWarning, match="halo profile --model smollm2-135m"):
        curves = load_curves("smollm2-135m", "fp32", "cpu", threads=2)
    assert curves.source == "default" and (curves.model, curves.dtype, curves.threads) == ("smollm2-135m", "fp32", 2)
    assert curves.generate_s(256, 0, 32, 8) > 0


def test_saved_profile_loads_without_warning_and_auto_takes_the_faster_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path))
    from dataclasses import replace

    slow_fp32 = replace(CURVES, model="smollm2-135m", prefill=(0.1, 1e-3, 1e-7))
    fast_bf16 = replace(slow_fp32, dtype="bf16", prefill=(0.01, 1e-4, 1e-7))
    path = save_curves(slow_fp32)
    save_curves(fast_bf16)
    assert path == tmp_path / "profiles" / "smollm2-135m-fp32-cpu-t2.json"
    assert profile_path("/models/Foo 1.gguf", "bf16", "cpu", 4).name == "Foo_1-bf16-cpu-t4.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_curves("smollm2-135m", "fp32", threads=2) == slow_fp32
        assert load_curves("smollm2-135m", "auto", threads=2) == fast_bf16


def test_int8_and_int4_profiles_are_keyed_apart_from_their_dtypes(tmp_path, monkeypatch):
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path))
    from dataclasses import replace

    bf16 = replace(CURVES, model="smollm2-135m", dtype="bf16")
    int8 = replace(bf16, weights="int8", decode=(0.01, 1e-4, 1e-7))
    fp32 = replace(bf16, dtype="fp32", prefill=(0.5, 1e-3, 1e-6))  # slower: auto prefers bf16
    assert save_curves(bf16).name == "smollm2-135m-bf16-cpu-t2.json"  # float weights: the dtype's file
    assert save_curves(int8).name == "smollm2-135m-bf16-int8-cpu-t2.json"
    save_curves(fp32)
    assert profile_path("m", "fp32", "cpu", 2, weights="fp32").name == "m-fp32-cpu-t2.json"
    assert profile_path("m", "fp32", "cpu", 2, weights="int4").name == "m-fp32-int4-cpu-t2.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in ("bf16", "auto"):
            assert load_curves("smollm2-135m", dtype, threads=2, weights="int8") == int8
        assert load_curves("smollm2-135m", "auto", threads=2, weights="auto") == bf16  # auto: the float curves
        assert load_curves("smollm2-135m", "auto", threads=2, weights="fp32") == fp32  # fp32 weights: fp32 compute
        assert load_curves("smollm2-135m", "fp32", threads=2) == fp32
    assert LatencyCurves.load(tmp_path / "profiles" / "smollm2-135m-bf16-int8-cpu-t2.json").weights == "int8"


def test_a_weight_format_never_profiled_plans_with_its_dtypes_curves_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path))
    from dataclasses import replace

    bf16 = replace(CURVES, model="smollm2-135m", dtype="bf16")
    save_curves(bf16)
    with pytest.warns(WeightsProfileMissingWarning, match=r"no int4 latency profile for model smollm2-135m") as got:
        assert load_curves("smollm2-135m", "bf16", threads=2, weights="int4") == bf16
    (note,) = [str(w.message) for w in got]
    assert "planning with its bf16 curves" in note
    assert "halo profile --model smollm2-135m --dtype bf16 --weights int4" in note
    with pytest.warns(UserWarning) as got:  # nothing measured at all: both notes, then the built-in curve
        curves = load_curves("other", "fp32", threads=2, weights="int8")
    assert [w.category for w in got] == [WeightsProfileMissingWarning, ProfileMissingWarning]
    assert curves.source == "default" and (curves.model, curves.dtype) == ("other", "fp32")


# ---- against the real engine ---------------------------------------------------------------------
# How well the curves predict held-out shapes is a timing, measured by bench/cost_curves.py (issue 5's
# 25% target); here the smallest grid the fit accepts checks what a profile contains and how it reads.
TINY_GRID = ProfileGrid(
    prefill_new=(16, 32, 64),
    prefill_cached=(0, 32),
    prefill_batched=((2, 32),),
    decode_batch=(1, 2, 4),
    decode_context=(32,),
    repeats=1,
    kv_copy_tokens=64,
)


@pytest.mark.slow
def test_a_profile_of_the_real_engine_is_complete_and_its_curves_are_monotonic(checkpoint):
    import math

    from halo.engine import LLMEngine
    from halo.runtime.engine_profiler import profile_engine

    engine = LLMEngine(checkpoint, dtype="auto")
    curves = profile_engine(engine, grid=TINY_GRID, load_s=1.0)
    assert curves.source == "profiled" and not engine.has_unfinished()
    cfg = engine.config  # K and V, every layer and KV head, in the engine's dtype
    itemsize = engine.kv.k.element_size()
    assert curves.kv_bytes_per_token == 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
    assert curves.kv_bytes_per_s > 1e7 and curves.model_load_s == 1.0
    assert curves.step_tokens == engine.batch_scheduler.max_batch_tokens
    assert {"cpu", "probe_gflops", "attention", "profile_seconds"} <= curves.facts.keys()
    # every grid shape was measured once, nothing more (a runaway grid shows here, not as a time bound)
    g = TINY_GRID
    assert len(curves.facts["prefill_samples"]) == len(g.prefill_new) * len(g.prefill_cached) + len(g.prefill_batched)
    assert len(curves.facts["decode_samples"]) == len(g.decode_batch) * len(g.decode_context)
    coefficients = (*curves.prefill, *curves.decode)
    assert all(math.isfinite(x) and x >= 0 for x in coefficients), coefficients
    assert math.isfinite(curves.fit_error)

    def non_decreasing(values: list[float]) -> bool:
        return all(a <= b for a, b in zip(values, values[1:], strict=False))

    assert non_decreasing([curves.prefill_s(n) for n in (16, 64, 256, 1024, 4096)])  # tokens (and chunked steps)
    assert non_decreasing([curves.prefill_s(64, 0, b) for b in (1, 2, 8, 32)])  # batch
    assert non_decreasing([curves.prefill_s(64, c) for c in (0, 128, 512, 2048)])  # cached context
    assert non_decreasing([curves.decode_step_s(b, 256) for b in (1, 4, 16, 64)])
    assert non_decreasing([curves.decode_step_s(8, c) for c in (16, 256, 1024, 4096)])
    assert non_decreasing([curves.generate_s(144, 0, out, 6) for out in (1, 4, 12, 64)])
    assert curves.generate_s(144, 0, 12, 6) > 0
