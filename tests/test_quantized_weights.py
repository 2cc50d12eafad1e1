"""Weight formats: the int8/int4 layers compute what their format says, and engines in them are consistent.

Layer tests compare each kernel with the plain torch product of its dequantized weight. Engine tests
run a tiny random-weight checkpoint (built here; no model file is read) in int8 and int4: a batched
run with prefix sharing and chunked prefill gives the same greedy tokens as one request at a time
with the same weights. One slow test checks the real default model in int8 against bf16.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from halo.engine import LLMEngine, SamplingParams, dtype_probe
from halo.engine.checkpoint_layout import Checkpoint, expected_shapes
from halo.engine.model_config import ModelConfig
from halo.engine.quantized_linear import (
    WEIGHT_FORMATS,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    WeightFormat,
    dequantize_int4,
    quantize_int4,
    weight_bytes,
)
from halo.engine.tokenizer import Tokenizer
from halo.errors import InvalidRequestError
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models

VOCAB = 96
CPU = torch.device("cpu")
SHARED = list(range(40, 60))  # a prefix every prompt starts with, so the batched run shares KV blocks
PROMPTS = [SHARED + list(range(1 + i, 12 + 3 * i)) for i in range(6)]
PARAMS = SamplingParams(max_tokens=20, ignore_eos=True)


def tiny_checkpoint(seed: int = 0, tied: bool = True, intermediate: int = 128, biases: bool = False) -> Checkpoint:
    """A llama-shaped checkpoint with random weights: 2 layers, 4 query / 2 KV heads of 16 dims."""
    config = ModelConfig(
        "tiny-random", 2, 64, 4, 2, 16, intermediate, VOCAB, 1e4, 1e-5, 512, tied,
        qkv_bias=biases, o_bias=biases, mlp_bias=biases,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)

    def draw(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if len(shape) == 2 or name.rsplit(".", 1)[-1].startswith("b"):
            return (0.3 if len(shape) == 2 else 0.1) * torch.randn(shape, generator=gen)
        return torch.ones(shape)  # norms

    weights = {name: draw(name, shape) for name, shape in expected_shapes(config).items()}
    backend = BackendTokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    return Checkpoint(Path("tiny-random"), config, weights, Tokenizer(backend, eos_id=0))


def engine(weights: str, dtype: str = "bf16", **kw) -> LLMEngine:
    kw = {"kv_blocks": 64, "swap_space_gb": 0} | kw
    return LLMEngine(tiny_checkpoint(**kw.pop("ckpt", {})), dtype=dtype, weights=weights, **kw)


# ---- the layers -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_product_is_the_dequantized_weights_product(dtype: torch.dtype, bias: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(96, 160, generator=gen)
    b = torch.randn(96, generator=gen).to(dtype) if bias else None
    layer = Int8Linear.from_float(w, b)
    x = torch.randn(7, 160, generator=gen).to(dtype)
    # the kernel runs on bf16 activations (quantized_linear.py): the reference rounds x the same way
    want = x.to(torch.bfloat16).float() @ layer.dequantize().T
    got = layer(x)
    assert got.dtype == dtype
    if b is not None:
        got = got - b
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
    # and the format is faithful: every weight within half a step of its row's scale
    step = layer.scales.float()[:, None]
    assert ((layer.dequantize() - w).abs() <= 0.5 * step + 1e-6).all()


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int4_product_is_the_dequantized_weights_product(group: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(48, 256, generator=gen)
    q, scales_and_zeros = quantize_int4(w, group)
    assert q.min() >= 0 and q.max() <= 15
    layer = Int4Linear(q, scales_and_zeros, group)
    x = torch.randn(5, 256, generator=gen).to(dtype)
    dense = dequantize_int4(q, scales_and_zeros, group)
    want = x.to(torch.bfloat16).float() @ dense.T
    torch.testing.assert_close(layer(x).float(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
    step = scales_and_zeros[..., 0].float().T.repeat_interleave(group, dim=1)
    assert ((dense - w).abs() <= 0.5 * step + 1e-2 * w.abs().max()).all()  # bf16-rounded scale and zero


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_each_output_row_ignores_the_rest_of_the_batch(kind: str) -> None:
    # what makes a batched run equal a serial one: a row's product is the same in any batch
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(3))
    layer = WeightFormat(kind, torch.bfloat16, CPU).linear(w)
    assert layer.format == kind
    x = torch.randn(37, 128, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    full = layer(x)
    for rows in (slice(0, 1), slice(3, 4), slice(5, 22), slice(30, 37)):
        assert torch.equal(layer(x[rows].contiguous()), full[rows])


@pytest.mark.parametrize("source", ["Q4_0", "Q8_0"])
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_gguf_quantized_tensor_requantizes_within_half_a_step(source: str, kind: str) -> None:
    # GGUF tensors reach the model dequantized to fp32 (gguf_checkpoint.py); the format quantizes
    # those values again. Min/max rounding does not keep the GGUF grid, so a value moves by at most
    # half a step of the new format on top of the GGUF rounding.
    rng = np.random.default_rng(5)
    dense = rng.standard_normal((32, 256)).astype(np.float32)
    qtype = getattr(gguf.GGMLQuantizationType, source)
    loaded = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(dense, qtype), qtype).copy())
    if kind == "int8":
        layer = Int8Linear.from_float(loaded)
        again, step = layer.dequantize(), layer.scales.float()[:, None]
    else:
        q, scales_and_zeros = quantize_int4(loaded, 32)
        again = dequantize_int4(q, scales_and_zeros, 32)
        step = scales_and_zeros[..., 0].float().T.repeat_interleave(32, dim=1)
    assert ((again - loaded).abs() <= 0.5 * step + 1e-2 * loaded.abs().max()).all()
    assert WeightFormat(kind, torch.bfloat16, CPU).linear(loaded).format == kind


def test_int4_shape_the_kernel_cannot_take_is_an_error_or_an_int8_layer() -> None:
    w = torch.randn(64, 48)  # in_features 48 is not a multiple of any group the kernel takes
    with pytest.raises(InvalidRequestError, match=r"int4 needs a group size in \(32, 64, 128, 256\).*\(64, 48\)"):
        Int4Linear.from_float(w, 32)
    with pytest.raises(InvalidRequestError, match="group 16"):
        Int4Linear.from_float(torch.randn(64, 64), 16)
    # the model's factory stores such a layer as int8 instead, and the engine says how many
    assert WeightFormat("int4", torch.bfloat16, CPU).linear(w).format == "int8"
    eng = engine("int4", ckpt={"intermediate": 80})  # w_down's in_features 80 % 32 != 0
    assert eng.describe()["weight_layers"] == {"int4": 6, "int8": 3}  # 2 w_down + the head
    assert len(eng.generate([PROMPTS[0]], PARAMS)[0].token_ids) == PARAMS.max_tokens


# ---- embedding and head -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_tied_head_and_embedding_share_one_int8_table(kind: str) -> None:
    fmt = WeightFormat(kind, torch.bfloat16, CPU)
    table = torch.randn(VOCAB, 64)
    embed, head = fmt.embedding_and_head(table, None)
    assert isinstance(embed, Int8Embedding) and isinstance(head, Int8Linear)
    assert embed.qweight is head.qweight and embed.scales is head.scales
    ids = torch.tensor([0, 5, 95, 5])
    assert torch.equal(embed[ids], head.dequantize()[ids].to(torch.bfloat16))
    embed, head = fmt.embedding_and_head(table, 2 * table)  # untied: two tables
    assert embed.qweight is not head.qweight
    torch.testing.assert_close(head.dequantize(), 2 * table, atol=0.05, rtol=0.02)


def test_weight_bytes_of_the_model_match_the_estimate() -> None:
    for kind in ("fp32", "int8", "int4"):
        for tied in (True, False):
            eng = engine(kind, dtype="fp32" if kind == "fp32" else "bf16", ckpt={"tied": tied})
            norms = 64 * (2 * 2 + 1) * (4 if kind == "fp32" else 2)
            assert eng.model.weight_bytes() == weight_bytes(eng.config, kind) + norms, (kind, tied)


# ---- engines in each format -------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,dtype,biases",
    [("int8", "bf16", False), ("int4", "bf16", False), ("int8", "fp32", False), ("int4", "fp32", True)],
)
def test_batched_run_equals_serial_run_in_quantized_formats(kind: str, dtype: str, biases: bool) -> None:
    # optimized: all prompts at once, prefix cache on, chunked prefill mixed with decodes
    batched = engine(kind, dtype, max_batch_tokens=24, ckpt={"biases": biases})
    assert batched.describe()["weights"] == kind and batched.describe()["dtype"] == dtype
    together = [r.token_ids for r in batched.generate(PROMPTS, PARAMS)]
    assert batched.stats().cached_tokens > 0, "the batched run should have shared the prefix"
    # serial: one request at a time, nothing cached, from an independently built copy of the weights
    serial = engine(kind, dtype, enable_prefix_cache=False, ckpt={"biases": biases})
    alone = [serial.generate([p], PARAMS)[0].token_ids for p in PROMPTS]
    assert together == alone


def test_quantized_formats_stay_close_to_float() -> None:
    # random weights with peaked attention amplify rounding: a loose check that int8 is close and
    # int4 (16 levels per group) closer to nothing than to fp32; the real-model figures are in bench/
    logits = {kind: engine(kind, "fp32").next_token_logits(PROMPTS[0]) for kind in ("fp32", "int8", "int4")}
    cosine = {k: torch.nn.functional.cosine_similarity(logits[k], logits["fp32"], dim=0).item() for k in logits}
    assert cosine["int8"] > 0.99 and cosine["int4"] > 0.3 and cosine["int8"] > cosine["int4"]


def test_bad_weights_value_names_the_allowed_values() -> None:
    for bad in ("int3", "q4_k_m", None, 8):
        with pytest.raises(InvalidRequestError, match=r"weights must be one of 'auto', 'bf16', 'fp32', 'int8', 'int4'"):
            engine(bad)
    assert WEIGHT_FORMATS == ("auto", "bf16", "fp32", "int8", "int4")
    with pytest.raises(InvalidRequestError, match=r"weights='bf16' keeps the weights in the compute dtype"):
        engine("bf16", dtype="fp32")
    with pytest.raises(InvalidRequestError, match="CPU only"):
        WeightFormat("int8", torch.bfloat16, torch.device("cuda"))


def test_float_weights_name_the_dtype() -> None:
    assert engine("fp32", dtype="auto").describe()["dtype"] == "fp32"
    assert engine("bf16", dtype="auto").describe()["dtype"] == "bf16"
    assert engine("fp32", dtype="fp32").model.weight_format == "fp32"


# ---- auto ---------------------------------------------------------------------------------------
def test_auto_keeps_the_float_format_of_the_dtype_for_a_small_model() -> None:
    for dtype in ("bf16", "fp32"):
        d = engine("auto", dtype).describe()
        assert d["weights"] == d["dtype"] == dtype
        assert "not picked for speed below 1B parameters" in d["weights_reason"]
        assert d["weights_probe_us"] == {}  # nothing to decide by speed: the probe is skipped


def test_auto_quantizes_when_the_float_weights_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_checkpoint().config
    fp32, int8 = weight_bytes(config, "fp32"), weight_bytes(config, "int8")
    reserved = 1000
    monkeypatch.setattr(dtype_probe, "available_memory", lambda: int((int8 + reserved + 10) / 0.9) + 1)
    choice = dtype_probe.choose_weights("auto", torch.float32, config, CPU, reserved)
    assert choice.name == "int8" and "fp32 weights need" in choice.reason and fp32 > choice.budget_bytes
    monkeypatch.setattr(dtype_probe, "available_memory", lambda: 1000)
    choice = dtype_probe.choose_weights("auto", torch.float32, config, CPU, reserved)
    assert choice.name == "int4" and "does not fit either" in choice.reason


def test_auto_uses_the_probe_above_the_size_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_checkpoint().config
    monkeypatch.setattr(dtype_probe, "MIN_PARAMS_FOR_SPEED", 0)
    choice = dtype_probe.choose_weights("auto", torch.bfloat16, config, CPU)
    assert set(choice.probe_us) == {"bf16", "int8", "int4"}
    assert all(set(by_batch) == set(dtype_probe.PROBE_BATCHES) for by_batch in choice.probe_us.values())
    assert choice.name in ("bf16", "int8") and "at batch 64" in choice.reason
    # measured once per shape and dtype, as the dtype probe is
    assert dtype_probe.weight_format_probe(256, 64, torch.bfloat16) is dtype_probe.weight_format_probe(
        256, 64, torch.bfloat16
    )


# ---- the real model ---------------------------------------------------------------------------
AGREEMENT_PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "def fibonacci(n):",
    "The three primary colors are",
    "Once upon a time, in a small village,",
    "To make a cup of tea, first",
]


@pytest.mark.slow
def test_real_model_in_int8_is_coherent_and_agrees_with_bf16() -> None:
    params = SamplingParams(max_tokens=16)
    outs = {
        kind: LLMEngine(dtype="bf16", weights=kind, swap_space_gb=0).generate(AGREEMENT_PROMPTS, params)
        for kind in ("bf16", "int8")
    }
    same = total = 0
    for ref, got in zip(outs["bf16"], outs["int8"], strict=True):
        # agreement = positions equal before the first divergence (later tokens follow other contexts)
        pairs = enumerate(zip(ref.token_ids, got.token_ids, strict=False))
        n = next((i for i, (a, b) in pairs if a != b), min(len(ref.token_ids), len(got.token_ids)))
        same, total = same + n, total + len(ref.token_ids)
        print(f"{n:2d}/{len(ref.token_ids)}  bf16 {ref.text!r}\n       int8 {got.text!r}")
    print(f"int8 vs bf16 greedy agreement: {same}/{total} = {same / total:.0%}")
    assert same / total >= 0.5
    assert outs["int8"][0].text.strip(), "int8 should produce text"
    words = " ".join(r.text for r in outs["int8"]).split()
    assert len(set(words)) > len(words) / 3, "int8 output should not be one repeated token"
