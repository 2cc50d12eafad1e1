"""The model's weight products in bf16: ``F.linear`` against oneDNN pre-packed weights (`halo.engine.linear`).

Run: ``.venv/bin/python -m pytest bench/micro/bench_linear.py``. SmolLM2-135M's shapes (one layer's four
projections, then the 49,152-row head) at decode batch sizes 1, 8 and 32 and a 256-token prefill
chunk. Each result records the weight bytes per call and GB/s in ``extra_info``; compare rows of one
run (this machine is noisy), never across runs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from halo.engine.dtype_probe import cpu_capability
from halo.engine.linear import Linear, packing_available

HIDDEN = 576
LAYER = {"wqkv": 960, "wo": 576, "w_gate_up": 3072, "w_down": 576}  # out features; w_down reads 1536
HEAD = 49152
BATCHES = [1, 8, 32, 256]

pytestmark = pytest.mark.skipif(
    not packing_available(torch.device("cpu"), torch.bfloat16), reason="this torch build cannot pre-pack bf16"
)


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {name: (out, 1536 if name == "w_down" else HIDDEN) for name, out in LAYER.items()}
    shapes["head"] = (HEAD, HIDDEN)
    return {name: (torch.randn(*shape, generator=g) * 0.02).bfloat16() for name, shape in shapes.items()}


def _inputs(batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        name: torch.randn(batch, 1536 if name == "w_down" else HIDDEN, generator=g).bfloat16()
        for name in [*LAYER, "head"]
    }


def _record(benchmark, weights: dict[str, torch.Tensor], packed: bool) -> None:
    nbytes = sum(w.numel() * 2 for w in weights.values())
    benchmark.extra_info.update(
        cpu=cpu_capability(),
        dtype="bf16",
        threads=torch.get_num_threads(),
        packed=packed,
        weight_bytes=nbytes,
        gb_per_s=nbytes / benchmark.stats["mean"] / 1e9,
    )


@pytest.mark.parametrize("batch", BATCHES)
def bench_f_linear(benchmark, batch):
    weights, xs = _weights(), _inputs(batch)
    benchmark(lambda: [F.linear(xs[name], w) for name, w in weights.items()])
    _record(benchmark, weights, packed=False)


@pytest.mark.parametrize("batch", BATCHES)
def bench_prepacked(benchmark, batch):
    weights, xs = _weights(), _inputs(batch)
    linears = {name: Linear(w, pack=True) for name, w in weights.items()}
    assert all(lin.packed for lin in linears.values())
    benchmark(lambda: [lin(xs[name]) for name, lin in linears.items()])
    _record(benchmark, weights, packed=True)
