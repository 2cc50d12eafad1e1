"""Batch-invariant weight products: a row's result never depends on how many rows share its step.

A matmul kernel picks its blocking, its micro-kernel and its split of the work over threads from the
problem's shape, and with them the order in which each output sums its K products. Row ``r`` of
``x @ W.T`` is then rounded one way when ``x`` has 1 row and another when it has 64 (oneDNN's bf16
kernels on AVX-512, MKL's sgemm at M = 1 / 2-3 / 4+ on AVX2, measured by
``bench/batch_invariance.py``). In bf16 one last-bit difference flips a greedy token now and then,
and every later token of that answer follows the flip: a batch's answers changed when a row was
added.

`RowTiledLinear` makes the shape a row sees a constant: the step's rows go through the kernel in tiles
of ``TILE_ROWS`` rows, whatever the step holds. What is left to the kernel is that a row's sums may not
depend on its position in a tile nor on the other rows' values, and that is not assumed either:
`tile_mode` checks, once per layer shape on this machine (CPU, torch build, thread count; remembered
in the probe cache), by running the layer on random rows, what is exact, as the least tile height
``pad_to`` from which every height up to ``TILE_ROWS`` gives each row the bits of a full tile:

- ``pad_to = 1`` (``free``): every height 1..TILE_ROWS agrees, at any position and beside any rows. A
  partial tile (the last one of a step, or a decode step of a few rows) runs at its own height and
  costs nothing extra: this machine's bf16, int8 and int4 kernels, which reduce each row in one order.
- ``1 < pad_to <= TILE_ROWS`` (``padded``): heights below ``pad_to`` round otherwise, so a partial tile
  shorter than that is padded with zero rows to ``pad_to`` (MKL's fp32 sgemm here agrees from 12 rows:
  a batch-1 decode computes 12 rows). ``pad_to = TILE_ROWS`` is one kernel shape for every call.
- ``pad_to = 0`` (``rows``): not even a full tile's rows are independent of their position: every row
  runs alone (``M = 1``, one shape, one position). Exact, and slow beyond small batches; never seen.

A ``free`` layer is then checked at the taller heights of ``WIDE_TILE_ROWS`` in turn, each against a
tile of that height: its tiles are the tallest height up to which every height agrees. A tile of 16
rows streams a layer's weights once per 16 rows, which made a 512-token prefill 0.35x of plain bf16 on
AMX; a wide tile reads them fewer times and makes decode batches up to its height one kernel call.
(oneDNN's bf16 kernels on AMX here are free up to 32 rows and change their order from 33 rows on.) A
layer that is not free keeps ``TILE_ROWS``: its short tiles are padded, and padding a batch-1 decode
to a wide tile would cost more than it saves.

The check runs the real layer (its weights, its format: fp32, bf16 packed or not, int8, int4), so it
proves the property for the kernel that will run, not for a stand-in. A reduction order does not
depend on the values summed, so random rows stand for every input. Its cost is one product per height and
window (about h**2 / 2 rows for tiles of height h, plus ``CHECKED_ROWS`` at each short height) per
distinct layer shape, once per machine: remembered in the probe cache.
"""

from __future__ import annotations

import torch

from halo.engine.probe_cache import remembered
from halo.engine.quantized_linear import LinearLayer

TILE_ROWS = 16  # rows per kernel call in batch-invariant mode (the cost trade-off: docs/architecture.md)
WIDE_TILE_ROWS = (32, 64, 128)  # taller tiles a free layer is checked at, in turn (module docstring)
CHECKED_ROWS = 16  # rows the tile check tries each height on, at least (check_tile_mode)
# LLMEngine(deterministic=...)'s default: off, from the 200-row fidelity and --cost figures (README, "Batch invariance")
DETERMINISTIC_DEFAULT = False


class RowTiledLinear:
    """A linear layer whose kernel only ever sees row counts that give a row the same bits (module docstring)."""

    __slots__ = ("inner", "pad_to", "rows", "out_features", "in_features", "format")

    def __init__(
        self, inner: LinearLayer, dtype: torch.dtype, rows: int = TILE_ROWS, wide: tuple[int, ...] = WIDE_TILE_ROWS
    ) -> None:
        """``dtype``: the activations' dtype (the model's compute dtype), what the check feeds the layer;
        ``rows``: the tile every layer is checked at; ``wide``: the taller tiles a free layer may get."""
        self.inner = inner
        self.out_features, self.in_features, self.format = inner.out_features, inner.in_features, inner.format
        self.pad_to: int = tile_mode(inner, dtype, rows)
        self.rows = rows
        if self.pad_to == 1:  # taller tiles only for a free kernel, while it stays free (module docstring)
            for height in (h for h in wide if h > rows):
                if tile_mode(inner, dtype, height) != 1:
                    break
                self.rows = height

    @property
    def mode(self) -> str:
        """``free``, ``padded to N`` or ``rows`` (module docstring) and the tile height, as the benchmark prints it."""
        kind = {0: "rows", 1: "free"}.get(self.pad_to, f"padded to {self.pad_to}")
        return kind if self.pad_to == 0 else f"{kind}, tiles of {self.rows}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t, r, pad_to = x.shape[0], self.rows, self.pad_to
        if t == 0:  # a step whose rows all continue a prefill samples nothing: no head rows
            return x.new_empty(0, self.out_features)
        if pad_to == 0:
            return torch.cat([self.inner(x[i : i + 1]) for i in range(t)])
        if pad_to <= t <= r:
            return self.inner(x.contiguous())
        parts = []
        for start in range(0, t, r):
            tile = x[start : start + r].contiguous()
            m = tile.shape[0]
            if m < pad_to:
                tile = torch.cat([tile, tile.new_zeros(pad_to - m, tile.shape[1])])
                parts.append(self.inner(tile)[:m])
            else:
                parts.append(self.inner(tile))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def numel(self) -> int:
        return self.inner.numel()

    def nbytes(self) -> int:
        return self.inner.nbytes()


def layer_key(layer: LinearLayer) -> dict[str, object]:
    """What a kernel's reduction order depends on besides the machine: format, shape, bias, packing."""
    return {
        "format": layer.format,
        "shape": [layer.out_features, layer.in_features],
        "bias": getattr(layer, "bias", None) is not None,
        "packed": getattr(layer, "packed", False) is True,  # (an int4 layer's packed is its nibbles)
        "group": getattr(layer, "group", None),
        "kind": type(layer).__name__,
    }


def tile_mode(layer: LinearLayer, dtype: torch.dtype, rows: int = TILE_ROWS) -> int:
    """The least exact tile height ``pad_to`` of ``layer`` on this machine (module docstring), remembered."""
    key = {**layer_key(layer), "dtype": str(dtype), "rows": rows, "threads": torch.get_num_threads(),
           "checked_rows": CHECKED_ROWS}  # (verdicts of the check before it tried CHECKED_ROWS rows are not reused)
    return int(remembered("batch_invariance_pad_to", key, lambda: check_tile_mode(layer, dtype, rows)))


@torch.inference_mode()
def check_tile_mode(layer: LinearLayer, dtype: torch.dtype, rows: int = TILE_ROWS) -> int:
    """Measure `tile_mode`: products of random rows at every height up to ``rows``, in other positions
    and beside other rows, compared bit for bit with a full tile's."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, layer.in_features, generator=generator).to(dtype)
    full = layer(x)
    # the same rows one position down (the last wraps to the top), and row 0 beside other rows
    moved = torch.roll(x, 1, dims=0)
    others = torch.cat([x[:1], torch.randn(rows - 1, layer.in_features, generator=generator).to(dtype)])
    if not (torch.equal(layer(moved), torch.roll(full, 1, dims=0)) and torch.equal(layer(others)[0], full[0])):
        return 0
    # A height m call computes rows at positions 0..m-1: they must be the full tile's rows. Each height
    # is tried on at least CHECKED_ROWS of them (consecutive windows), not only the first m: where a
    # kernel's order differs, an output shows it only when the two sums round to different values in
    # the output dtype, which for short sums in bf16 can miss every output of a single row (a 49,152 x
    # 32 head at M = 1 here).
    for m in range(rows - 1, 0, -1):
        for start in range(0, min(rows, max(m, CHECKED_ROWS)) - m + 1, m):
            if not torch.equal(layer(x[start : start + m].contiguous()), full[start : start + m]):
                return m + 1
    return 1
