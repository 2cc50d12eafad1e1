"""LLM latency curves: JSON round trip, default-with-warning, fit, and predictions against the real engine."""

from __future__ import annotations

import warnings

import pytest
from halo.plan.cost import (
    DecodeSample,
    LatencyCurves,
    PrefillSample,
    ProfileMissingWarning,
    fit_latency_curves,
    load_curves,
    profile_path,
    save_curves,
)
from halo.runtime.engine_profiler import EngineTimer

CURVES = LatencyCurves(model="m", dtype="fp32", device="cpu", threads=2,
                       prefill=(0.01, 2e-4, 1e-7), decode=(0.02, 3e-4, 1e-6), step_tokens=512,
                       facts={"cpu": "AVX2"})


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
    true = LatencyCurves(model="m", dtype="bf16", device="cpu", threads=2,
                         prefill=(0.02, 3e-4, 5e-8), decode=(0.015, 1e-4, 2e-7))
    prefill = [PrefillSample(n, c, b, true.prefill_s(n, c, b))
               for n, c, b in [(32, 0, 1), (512, 0, 1), (128, 256, 1), (64, 0, 8), (256, 512, 1)]]
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


# ---- against the real engine ---------------------------------------------------------------------
# Shapes the profile grid does not contain: other prompt lengths, cached prefixes, batches, contexts.
HELD_OUT_PREFILL = [(192, 0, 1), (96, 384, 1), (160, 0, 3), (48, 128, 5)]  # (new, cached, batch)
HELD_OUT_DECODE = [(16, 192), (48, 384), (4, 320)]  # (batch, context)
HELD_OUT_GENERATE = (6, 144, 12)  # batch, prompt tokens, output tokens: one whole engine.generate()
TOLERANCE = 0.25  # issue 5: predictions within 25% of measured engine times


def _held_out_errors(engine, curves) -> dict[str, float]:
    """Relative error of the prediction on every held-out shape (each measured as the best of 3)."""
    import time

    from halo.engine import SamplingParams

    timer = EngineTimer(engine, seed=99)
    errors = {}
    for new, cached, batch in HELD_OUT_PREFILL:
        measured = timer.prefill(new, cached, batch).seconds
        errors[f"prefill new={new} cached={cached} batch={batch}"] = curves.prefill_s(new, cached, batch) / measured - 1
    for batch, context in HELD_OUT_DECODE:
        s = timer.decode(batch, context)
        errors[f"decode batch={batch} context={context}"] = curves.decode_step_s(batch, s.context) / s.seconds - 1
    batch, prompt, out = HELD_OUT_GENERATE
    best = float("inf")
    for _ in range(3):
        prompts = [timer.tokens(prompt) for _ in range(batch)]
        t0 = time.perf_counter()
        engine.generate(prompts, SamplingParams(max_tokens=out, ignore_eos=True))
        best = min(best, time.perf_counter() - t0)
    errors[f"generate batch={batch} prompt={prompt} output={out}"] = curves.generate_s(prompt, 0, out, batch) / best - 1
    return errors


@pytest.mark.slow
def test_profiled_curves_predict_held_out_shapes_within_25_percent(checkpoint):
    from halo.engine import LLMEngine
    from halo.runtime.engine_profiler import profile_engine

    engine = LLMEngine(checkpoint, dtype="auto")
    # The machine is shared: a timing disturbed by other work reads slow. Each sample is already the
    # fastest of 3; should a held-out shape still miss, the whole profile + check is repeated once.
    attempts = []
    for _ in range(2):
        curves = profile_engine(engine, load_s=1.0)
        # Not a timing test (a contended machine doubles it); this only catches a runaway grid.
        assert curves.source == "profiled" and curves.facts["profile_seconds"] < 300
        cfg = engine.config  # K and V, every layer and KV head, in the engine's dtype
        itemsize = engine.kv.k.element_size()
        assert curves.kv_bytes_per_token == 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
        assert curves.kv_bytes_per_s > 1e7 and curves.model_load_s == 1.0
        errors = _held_out_errors(engine, curves)
        attempts.append((max(abs(e) for e in errors.values()), errors, curves))
        if attempts[-1][0] <= TOLERANCE:
            break
    worst, errors, curves = min(attempts, key=lambda a: a[0])
    report = "\n".join(f"  {k}: {v:+.1%}" for k, v in errors.items())
    assert worst <= TOLERANCE, f"{curves.describe()}\nheld-out prediction errors:\n{report}"
