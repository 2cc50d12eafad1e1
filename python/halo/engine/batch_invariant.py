"""Batch-invariant weight products: a row's result never depends on how many rows share its step.

A matmul kernel picks its blocking, its micro-kernel and its split of the work over threads from the
problem's shape, and with them the order in which each output sums its K products. Row ``r`` of
``x @ W.T`` is then rounded one way when ``x`` has 1 row and another when it has 64 (oneDNN's bf16
kernels on AVX-512, MKL's sgemm at M = 1 / 2-3 / 4+ on AVX2, measured by
``bench/batch_invariance.py``). In bf16 one last-bit difference flips a greedy token now and then,
and every later token of that answer follows the flip: a batch's answers changed when a row was
added.

`RowTiledLinear` makes the shape a row sees a constant: the step's rows go through the kernel in tiles
of exactly ``TILE_ROWS`` rows, whatever the step holds. What is left to the kernel is that a row's
sums may not depend on its position in a tile nor on the other rows' values, and that is not assumed
either: `tile_mode` checks, once per layer shape on this machine (CPU, torch build, thread count;
remembered in the probe cache), by running the layer on random rows, which of three ways is exact:

- ``free``: every height 1..TILE_ROWS gives each row the same bits as a full tile, at any position
  and beside any rows. A partial tile (the last one of a step, or a decode step of a few rows) then
  runs at its own height and costs nothing extra. This holds on machines whose kernel reduces each
  row in one fixed order (this AVX2 machine's bf16, int8 and int4 kernels).
- ``padded``: only full tiles are exact (the fp32 sgemm here): a partial tile is padded with zero rows
  to ``TILE_ROWS``, so every call has one shape; a batch-1 decode step computes ``TILE_ROWS`` rows.
- ``rows``: not even a full tile's rows are independent of their position: every row runs alone
  (``M = 1``, one shape, one position). Exact, and slow beyond small batches; never seen so far.

The check runs the real layer (its weights, its format: fp32, bf16 packed or not, int8, int4), so it
proves the property for the kernel that will run, not for a stand-in. A reduction order does not
depend on the values summed, so random rows stand for every input.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch

from halo.engine.probe_cache import remembered

TILE_ROWS = 16  # rows per kernel call in batch-invariant mode (the cost trade-off: docs/architecture.md)
# LLMEngine(deterministic=...)'s default, chosen from bench/batch_invariance.py --cost (see docs/architecture.md)
DETERMINISTIC_DEFAULT = False
TileMode = Literal["free", "padded", "rows"]


class _Layer(Protocol):
    out_features: int
    in_features: int
    format: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def numel(self) -> int: ...

    def nbytes(self) -> int: ...


class RowTiledLinear:
    """A linear layer whose kernel always sees the same row count (see the module docstring)."""

    __slots__ = ("inner", "mode", "rows", "out_features", "in_features", "format")

    def __init__(self, inner: _Layer, dtype: torch.dtype, rows: int = TILE_ROWS) -> None:
        """``dtype``: the activations' dtype (the model's compute dtype), what the check feeds the layer."""
        self.inner, self.rows = inner, rows
        self.out_features, self.in_features, self.format = inner.out_features, inner.in_features, inner.format
        self.mode: TileMode = tile_mode(inner, dtype, rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t, r = x.shape[0], self.rows
        if self.mode == "rows":
            return torch.cat([self.inner(x[i : i + 1]) for i in range(t)])
        if t == r or (t < r and self.mode == "free"):
            return self.inner(x.contiguous())
        parts = []
        for start in range(0, t, r):
            tile = x[start : start + r].contiguous()
            m = tile.shape[0]
            if m < r and self.mode == "padded":
                tile = torch.cat([tile, tile.new_zeros(r - m, tile.shape[1])])
                parts.append(self.inner(tile)[:m])
            else:
                parts.append(self.inner(tile))
        return torch.cat(parts)

    def numel(self) -> int:
        return self.inner.numel()

    def nbytes(self) -> int:
        return self.inner.nbytes()


def layer_key(layer: _Layer) -> dict[str, object]:
    """What a kernel's reduction order depends on besides the machine: format, shape, bias, packing."""
    return {
        "format": layer.format,
        "shape": [layer.out_features, layer.in_features],
        "bias": getattr(layer, "bias", None) is not None,
        "packed": getattr(layer, "packed", False) is True,  # (an int4 layer's packed is its nibbles)
        "group": getattr(layer, "group", None),
        "kind": type(layer).__name__,
    }


def tile_mode(layer: _Layer, dtype: torch.dtype, rows: int = TILE_ROWS) -> TileMode:
    """Which tiling makes ``layer``'s rows exact on this machine (module docstring), remembered per machine."""
    key = {**layer_key(layer), "dtype": str(dtype), "rows": rows, "threads": torch.get_num_threads()}
    return remembered("batch_invariance", key, lambda: check_tile_mode(layer, dtype, rows))


@torch.inference_mode()
def check_tile_mode(layer: _Layer, dtype: torch.dtype, rows: int = TILE_ROWS) -> TileMode:
    """Measure `tile_mode`: products of random rows at every height up to ``rows``, in other positions
    and beside other rows, compared bit for bit with a full tile's."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, layer.in_features, generator=generator).to(dtype)
    full = layer(x)
    # the same rows one position down (the last wraps to the top), and row 0 beside other rows
    moved = torch.roll(x, 1, dims=0)
    others = torch.cat([x[:1], torch.randn(rows - 1, layer.in_features, generator=generator).to(dtype)])
    if not (torch.equal(layer(moved), torch.roll(full, 1, dims=0)) and torch.equal(layer(others)[0], full[0])):
        return "rows"
    for m in range(1, rows):
        if not torch.equal(layer(x[:m].contiguous()), full[:m]):
            return "padded"
    return "free"
