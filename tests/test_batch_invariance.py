"""Batch invariance (`LLMEngine(deterministic=True)`): a row's logits are the same bits whatever shares its step.

Alone, in batches of several sizes, with and without prefix-cache hits, in other prefill chunkings
(a smaller token budget), in bf16, fp32 and the int8 / int4 weight formats, and across the serial and
the optimized plans of a workflow. The runs use the tiny random model with the default model's
tokenizer (tests/tiny_default_model.py): its logits are close together, so a last-bit difference
anywhere shows in the compared logits (bit for bit, not only the greedy tokens).
"""

from __future__ import annotations

from pathlib import Path

import halo
import pytest
import torch
from halo.engine import LLMEngine, SamplingParams, cpu_attention
from halo.engine.batch_invariant import TILE_ROWS, WIDE_TILE_ROWS, RowTiledLinear, check_tile_mode
from halo.engine.kv_cache import KVCache
from halo.engine.step_context import PrefillSpan, StepContext
from halo.spec import Workflow
from tiny_default_model import SOURCE, build_tiny_default

HEADER = " ".join(f"Rule {i}: check item {i} twice." for i in range(10))
PROMPTS = [HEADER + f" Question {i}: what does rule {i * 7 % 10} say about {i}?" for i in range(8)]
PARAMS = SamplingParams(max_tokens=5, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_default(tmp_path_factory.mktemp("tiny") / "tiny")


def _engine(model: Path, dtype: str = "bf16", weights: str = "auto", **options) -> LLMEngine:
    return LLMEngine(model=str(model), dtype=dtype, weights=weights, deterministic=True, kv_blocks=512,
                     swap_space_gb=0, **options)


def _run(engine: LLMEngine, prompts: list[str]) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Each prompt's greedy tokens and the logits rows it sampled them from, by prompt."""
    rows: dict[tuple[int, ...], list[torch.Tensor]] = {}

    def observe(seqs, logits):
        for seq, row in zip(seqs, logits, strict=True):
            rows.setdefault(tuple(seq.prompt_ids), []).append(row.clone())

    engine.runner.on_logits = observe
    try:
        results = engine.generate(prompts, PARAMS)
    finally:
        engine.runner.on_logits = None
    return {
        p: (r.token_ids, torch.stack(rows[tuple(r.prompt_token_ids)])) for p, r in zip(prompts, results, strict=True)
    }


def _alone(engine: LLMEngine) -> dict[str, tuple[list[int], torch.Tensor]]:
    out = {}
    for p in PROMPTS:
        engine.reset_prefix_cache()  # no hits: every prompt prefilled in full, decoded at batch 1
        out |= _run(engine, [p])
    return out


def _assert_same(got: dict, want: dict, what: str) -> None:
    for p, (tokens, logits) in got.items():
        assert tokens == want[p][0], f"{what}: tokens differ for {p[-40:]!r}"
        gap = float((logits - want[p][1]).abs().max())
        assert torch.equal(logits, want[p][1]), f"{what}: logits differ (max {gap:.3g})"


@pytest.mark.parametrize("dtype,weights", [("bf16", "auto"), ("fp32", "auto"), ("bf16", "int8"), ("bf16", "int4")])
def test_a_row_is_the_same_bits_alone_and_in_any_batch(tiny_model, dtype, weights):
    engine = _engine(tiny_model, dtype, weights)
    alone = _alone(engine)
    for size in (3, 8):
        engine.reset_prefix_cache()
        for start in range(0, len(PROMPTS), size):  # the first of each batch prefills the header, the rest hit
            _assert_same(_run(engine, PROMPTS[start : start + size]), alone, f"batch of {size}")
    assert engine.stats().cached_tokens > 0
    # everything cached now: each prompt's tail is a short prefill after a hit (or a decode row)
    _assert_same(_run(engine, PROMPTS[::-1]), alone, "with prefix hits")


def test_prefill_chunking_does_not_change_a_row(tiny_model):
    alone = _alone(_engine(tiny_model))
    # a 7-token budget: every prompt prefills in chunks of 7 or less beside the other rows' decodes
    _assert_same(_run(_engine(tiny_model, max_batch_tokens=7), PROMPTS), alone, "7-token chunks")


def test_the_engine_says_it_is_deterministic(tiny_model):
    assert _engine(tiny_model).describe()["deterministic"] is True


# ---- the pieces ----------------------------------------------------------------------------------


class _ShapeDependent:
    """A product whose rounding follows the row count below ``from_rows`` (as MKL's sgemm at M < 4 here),
    and, with ``position``, each row's index in the call."""

    out_features, in_features, format = 8, 4, "fp32"

    def __init__(self, from_rows: int = TILE_ROWS, position: bool = False, switch_at: int | None = None) -> None:
        self.weight = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
        self.from_rows, self.position, self.switch_at = from_rows, position, switch_at

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # an elementwise product and a last-dim sum: each row by itself (a matmul would round by M too)
        y = (x.unsqueeze(1) * self.weight).sum(-1) + 1e-3 * min(x.shape[0], self.from_rows)
        if self.position:
            y = y + 1e-3 * torch.arange(x.shape[0]).unsqueeze(1)
        if self.switch_at is not None and x.shape[0] >= self.switch_at:  # another kernel from M rows on
            y = y + 1e-3
        return y

    def numel(self) -> int:
        return 32

    def nbytes(self) -> int:
        return 128


@pytest.mark.parametrize("from_rows,position,pad_to", [(TILE_ROWS, False, TILE_ROWS), (4, False, 4), (1, False, 1),
                                                       (1, True, 0)])
def test_the_tile_check_finds_what_a_kernel_depends_on(from_rows, position, pad_to):
    layer = _ShapeDependent(from_rows, position)
    assert check_tile_mode(layer, torch.float32) == pad_to
    tiled = RowTiledLinear.__new__(RowTiledLinear)  # the verdict the check gave, without the probe cache
    tiled.inner, tiled.rows, tiled.pad_to = layer, TILE_ROWS, pad_to
    tiled.out_features, tiled.in_features, tiled.format = 8, 4, "fp32"
    x = torch.randn(3 * TILE_ROWS + 5, 4, generator=torch.Generator().manual_seed(2))
    alone = torch.cat([tiled(x[i : i + 1]) for i in range(x.shape[0])])
    for m in (2, 3, 5, TILE_ROWS, TILE_ROWS + 1, TILE_ROWS + 3, x.shape[0]):
        assert torch.equal(tiled(x[:m]), alone[:m])
    if (from_rows, position) != (1, False):  # the plain layer does depend on the batch
        assert not torch.equal(layer(x), torch.cat([layer(x[i : i + 1]) for i in range(x.shape[0])]))


def test_only_a_layer_free_at_every_height_up_to_the_wide_tile_gets_it():
    # free at every height: the wide check agrees too
    assert check_tile_mode(_ShapeDependent(1), torch.float32, WIDE_TILE_ROWS[-1]) == 1
    # free up to 16 rows, another rounding from 40 rows on: free at TILE_ROWS and 32, not at 64
    switching = _ShapeDependent(1, switch_at=40)
    assert check_tile_mode(switching, torch.float32) == 1
    assert check_tile_mode(switching, torch.float32, 32) == 1
    assert check_tile_mode(switching, torch.float32, 64) == 40


class _SwitchesAt40(_ShapeDependent):
    """Free below 40 rows, another rounding from 40 on (its own class: its own probe-cache key)."""

    def __init__(self) -> None:
        super().__init__(1, switch_at=40)


class _PadsTo4(_ShapeDependent):
    """Rounds by M below 4 rows, the same from 4 on (its own class: its own probe-cache key)."""

    def __init__(self) -> None:
        super().__init__(4)


def test_a_padded_layer_keeps_the_base_tile():
    # its short tiles are padded: widening would pad a batch-1 decode to the wide height
    tiled = RowTiledLinear(_PadsTo4(), torch.float32)
    assert (tiled.pad_to, tiled.rows, tiled.mode) == (4, TILE_ROWS, f"padded to 4, tiles of {TILE_ROWS}")


def test_a_wide_tile_stops_below_the_height_where_the_kernel_changes():
    tiled = RowTiledLinear(_SwitchesAt40(), torch.float32)
    assert (tiled.pad_to, tiled.rows, tiled.mode) == (1, 32, "free, tiles of 32")
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(3))
    alone = torch.cat([tiled(x[i : i + 1]) for i in range(x.shape[0])])
    for m in (2, 31, 32, 33, 40, 64, 100):
        assert torch.equal(tiled(x[:m]), alone[:m])


def test_the_engine_tiles_free_layers_wide_and_padded_layers_at_the_base_height(tiny_model):
    for dtype in ("bf16", "fp32"):
        model = _engine(tiny_model, dtype).model
        for layer in [model.lm_head, *(lin for layers in model.linears for lin in layers.values())]:
            assert layer.rows in (TILE_ROWS, *WIDE_TILE_ROWS), layer.mode
            if layer.pad_to != 1:
                assert layer.rows == TILE_ROWS, layer.mode


def _pool(blocks: int, dtype: torch.dtype) -> KVCache:
    from halo.engine.model_config import ModelConfig

    config = ModelConfig(name="t", num_layers=1, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                         intermediate_size=64, vocab_size=64, rope_theta=1e4, rms_eps=1e-5, context_length=512,
                         tie_embeddings=True)
    kv = KVCache(config, blocks, 16, dtype)
    g = torch.Generator().manual_seed(3)
    kv.k.copy_(torch.randn(kv.k.shape, generator=g))
    kv.v.copy_(torch.randn(kv.v.shape, generator=g))
    return kv


def _prefill_ctx(length: int, n: int) -> StepContext:
    blocks = torch.arange(-(-length // 16))
    return StepContext(
        input_ids=torch.zeros(n, dtype=torch.int64), positions=torch.arange(length - n, length),
        slots=torch.arange(length - n, length), num_decode=0, decode_blocks=torch.empty(0, dtype=torch.int64),
        decode_max_blocks=0, decode_lens=torch.empty(0, dtype=torch.int64), decode_mask=None,
        prefills=(PrefillSpan(0, n, length, blocks),), logits_rows=torch.tensor([n - 1]),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("window", [None, 40])  # 40: rows past the window take the per-row torch path
def test_a_token_attends_the_same_in_any_chunk(dtype, window):
    length = 100
    kv = _pool(-(-length // 16), dtype)
    q = torch.randn(length, 4, 16, generator=torch.Generator().manual_seed(4)).to(dtype)

    def rows(n: int) -> torch.Tensor:  # the last n tokens of the prompt computed in one chunk
        tables, lens = cpu_attention.row_tables(_prefill_ctx(length, n))
        return cpu_attention.attention_rows(q[length - n :], kv, 0, tables, lens, 0.25, window=window)

    full = rows(length)
    for n in (1, 2, 17, 64):
        assert torch.equal(rows(n), full[length - n :])


def test_tied_head_bytes_are_counted_once_when_tiled(tiny_model):
    plain = LLMEngine(model=str(tiny_model), dtype="fp32", kv_blocks=64, swap_space_gb=0)
    assert _engine(tiny_model, "fp32").model.weight_bytes() == plain.model.weight_bytes()


# ---- plans ---------------------------------------------------------------------------------------


def test_serial_and_optimized_plans_agree_in_bf16(tiny_model):
    workflow = (
        Workflow("invariance")
        .inputs("word")
        .llm("ask", system="You name fruit. " + HEADER, prompt="Name a fruit like {{ word }}.", max_tokens=5)
        .llm("echo", prompt="Repeat: {{ ask.output }} ({{ word }})", max_tokens=4)
        .outputs(ask="ask.output", echo="echo.output")
    )
    rows = [{"word": w} for w in ["apple", "pear", "fig", "kiwi", "plum", "lime", "date", "apple"]]
    options = {"kv_blocks": 512, "swap_space_gb": 0, "deterministic": True}
    with halo.compile(workflow, models={SOURCE: str(tiny_model)}, dtype="bf16", engine_options=options) as app:
        serial = app.run(rows, plan="serial", cache=False)
        optimized = app.run(rows, cache=False)
    assert serial.errors == [] and optimized.errors == []
    assert optimized.outputs == serial.outputs
    assert optimized.stats.llm_calls_executed < serial.stats.llm_calls_executed  # it did batch and share


@pytest.mark.parametrize("flag,options", [([], {}), (["--deterministic"], {"deterministic": True}),
                                          (["--no-deterministic"], {"deterministic": False})])
def test_halo_run_passes_the_switch_to_the_engines(flag, options):
    from halo.cli import build_parser
    from halo.runtime.run_command import compile_options

    args = build_parser().parse_args(["run", "wf.yaml", "--input", "in.jsonl", "--output", "out.jsonl", *flag])
    assert compile_options(args)["engine_options"] == {"weights": "auto", **options}
