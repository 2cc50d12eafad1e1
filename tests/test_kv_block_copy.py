"""The engine moves KV blocks only through `halo.kernels.copy_blocks`: swap-out/in and export/import.

A real LLMEngine on a tiny random-weight checkpoint (2 layers, built here; no model file is read,
so these tests are fast). The shared entry point is wrapped by a spy that records each call and
then runs the real copy, so the engine's outputs still depend on the copies being right: a swapping
engine must generate exactly what an engine that never preempts generates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from halo.engine import LLMEngine, SamplingParams
from halo.engine import kv_cache as kv_cache_module
from halo.engine.checkpoint_layout import Checkpoint, expected_shapes
from halo.engine.model_config import ModelConfig
from halo.engine.tokenizer import Tokenizer
from halo.kernels import copy_blocks
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models

VOCAB = 96
PROMPTS = [list(range(1 + i, 30 + 3 * i)) for i in range(6)]  # token ids: the tokenizer is a stand-in
PARAMS = SamplingParams(max_tokens=24, ignore_eos=True)


def tiny_checkpoint(seed: int = 0) -> Checkpoint:
    """A llama-shaped checkpoint with random weights: 2 layers, 4 query / 2 KV heads of 16 dims."""
    config = ModelConfig("tiny-random", 2, 64, 4, 2, 16, 128, VOCAB, 1e4, 1e-5, 512, True)
    gen = torch.Generator().manual_seed(seed)
    weights = {
        name: torch.ones(shape) if len(shape) == 1 else 0.3 * torch.randn(shape, generator=gen)
        for name, shape in expected_shapes(config).items()
    }
    backend = BackendTokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    return Checkpoint(Path("tiny-random"), config, weights, Tokenizer(backend, eos_id=0))


@dataclass(frozen=True)
class Copy:
    src: int  # storage address of the source K cache
    dst: int  # ... and of the destination's
    num_blocks: int
    backend: str

    def direction(self, eng: LLMEngine) -> str:
        """Which way the call went for `eng`: "gather" (its pool -> a staging buffer), "scatter" (back), or "other"."""
        pool = eng.kv.k.untyped_storage().data_ptr()
        return {(True, False): "gather", (False, True): "scatter"}.get((self.src == pool, self.dst == pool), "other")


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[Copy]:
    """Every call of the shared block copy made by KVCache, in order; each call still copies."""
    seen: list[Copy] = []

    def spy(src_k, src_v, dst_k, dst_v, src_ids, dst_ids, backend="auto"):
        seen.append(Copy(src_k.untyped_storage().data_ptr(), dst_k.untyped_storage().data_ptr(), len(src_ids), backend))
        copy_blocks(src_k, src_v, dst_k, dst_v, src_ids, dst_ids, backend)

    monkeypatch.setattr(kv_cache_module, "copy_blocks", spy)
    return seen


@pytest.fixture(scope="module")
def checkpoint_tiny() -> Checkpoint:
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def roomy_outputs(checkpoint_tiny: Checkpoint) -> list[list[int]]:
    eng = LLMEngine(model=checkpoint_tiny, dtype="fp32", kv_blocks=256, block_size=4, swap_space_gb=0)
    return [r.token_ids for r in eng.generate(PROMPTS, PARAMS)]


def test_swap_goes_through_the_shared_block_copy(checkpoint_tiny, roomy_outputs, copies):
    # 40 blocks of 4 tokens cannot hold six 30-50 token sequences growing by 24: preemption, and swap.
    eng = LLMEngine(
        model=checkpoint_tiny,
        dtype="fp32",
        kv_blocks=40,
        block_size=4,
        max_batch_tokens=32,
        enable_prefix_cache=False,
        swap_space_gb=0.01,
    )
    assert eng.kv.copy_backend == "torch"  # CPU: one indexed torch copy; a CUDA pool says "triton"
    out = [r.token_ids for r in eng.generate(PROMPTS, PARAMS)]
    assert out == roomy_outputs
    stats = eng.stats()
    assert stats.swapped_out > 0 and stats.swapped_in == stats.swapped_out
    gathers = [c for c in copies if c.direction(eng) == "gather"]
    scatters = [c for c in copies if c.direction(eng) == "scatter"]
    # one gather per swap-out, one scatter per swap-in, nothing else moved blocks
    assert (len(gathers), len(scatters)) == (stats.swapped_out, stats.swapped_in)
    assert len(copies) == len(gathers) + len(scatters)
    assert all(c.backend == "torch" for c in copies)
    assert sorted(c.num_blocks for c in gathers) == sorted(c.num_blocks for c in scatters)


def test_prefix_migration_goes_through_the_shared_block_copy(checkpoint_tiny, copies):
    src = LLMEngine(model=checkpoint_tiny, dtype="fp32", kv_blocks=64, block_size=4, swap_space_gb=0)
    dst = LLMEngine(model=checkpoint_tiny, dtype="fp32", kv_blocks=64, block_size=4, swap_space_gb=0)
    prompt = PROMPTS[3]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    plain = dst.generate([prompt], params)[0]
    dst.reset_prefix_cache()
    src.generate([prompt], params)
    assert copies == []  # generating moves no whole blocks

    exported = src.export_prefix(prompt)
    assert exported is not None and exported.num_tokens == len(prompt) // 4 * 4
    blocks = exported.num_tokens // 4
    assert [(c.direction(src), c.num_blocks, c.backend) for c in copies] == [("gather", blocks, "torch")]
    assert dst.import_prefix(exported) == exported.num_tokens
    assert [(c.direction(dst), c.num_blocks, c.backend) for c in copies[1:]] == [("scatter", blocks, "torch")]

    back = dst.export_prefix(prompt)
    assert torch.equal(back.k, exported.k) and torch.equal(back.v, exported.v)  # bit-identical round trip
    after = dst.generate([prompt], params)[0]
    assert after.token_ids == plain.token_ids and after.cached_tokens == exported.num_tokens
