"""Pre-packed bf16 weights (`halo.engine.linear`) give exactly `F.linear`'s numbers, in products and in generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from halo.engine import LLMEngine, SamplingParams
from halo.engine.linear import Linear, _check_packing, packing_available

# Packing needs the oneDNN ops and, on this CPU, packed products equal to F.linear's (on a CPU without
# native bf16, e.g. AVX2-only, oneDNN's emulated kernels round differently and Linear rightly does not pack).
needs_packing = pytest.mark.skipif(
    not packing_available(torch.device("cpu"), torch.bfloat16) or not _check_packing((96, 64), torch.bfloat16, False),
    reason="this torch build or CPU cannot pre-pack bf16 with F.linear's exact numbers",
)


@needs_packing
@pytest.mark.parametrize(("out_features", "in_features"), [(960, 576), (3072, 576), (576, 1536), (4096, 576)])
def test_packed_products_equal_f_linear_bit_for_bit(out_features: int, in_features: int) -> None:
    g = torch.Generator().manual_seed(out_features)
    weight = torch.randn(out_features, in_features, generator=g).bfloat16()
    linear = Linear(weight, pack=True)
    assert linear.packed
    for rows in (1, 2, 7, 16, 64, 300):
        x = torch.randn(rows, in_features, generator=g).bfloat16()
        assert torch.equal(linear(x), F.linear(x, weight)), rows


def test_fp32_and_unpacked_weights_use_f_linear() -> None:
    weight = torch.randn(64, 32)
    assert not packing_available(torch.device("cpu"), torch.float32)
    linear = Linear(weight, pack=False)
    x = torch.randn(3, 32)
    assert not linear.packed and linear.weight is weight
    assert torch.equal(linear(x), F.linear(x, weight))
    assert linear.numel() == 64 * 32


@pytest.mark.slow
@needs_packing
def test_engine_generates_the_same_tokens_with_and_without_packing() -> None:
    prompts = ["Write a short story about a cat.", "What is 17 times 23?", "List three colors.", "Name a river."]
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    outputs = {}
    for pack in (True, False):
        engine = LLMEngine(dtype="bf16", pack_weights=pack, kv_blocks=64, num_threads=torch.get_num_threads())
        assert engine.model.packed_weights is pack
        assert engine.describe()["packed_weights"] is pack
        outputs[pack] = [o.token_ids for o in engine.generate(prompts, params)]
    assert all(len(ids) == 24 for ids in outputs[True])
    assert outputs[True] == outputs[False]
