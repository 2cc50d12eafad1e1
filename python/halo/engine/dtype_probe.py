"""Pick the engine's compute dtype and weight format by measuring matmul speed on this CPU.

The dtype: bf16 only where a matmul probe shows it beats fp32. The weight format (`choose_weights`):
the float format of the dtype unless the memory budget or a probe of the model's own MLP shape in
each format says otherwise. The dtype probe's result is remembered per machine (probe_cache.py: a
figure taken on a busy machine is measured again at a quieter start, and said to be stale until
then); the weight-format probe runs once per process and shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

import torch

from halo.engine.linear import packing_available
from halo.engine.model_config import ModelConfig
from halo.engine.probe_cache import SpeedFigure, remembered_speed
from halo.engine.quantized_linear import LinearLayer, WeightFormat, float_format_name, weight_bytes
from halo.errors import InvalidRequestError

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str
    gflops: dict[str, float]  # probe GFLOP/s per dtype name ("bf16", "fp32"); empty when not probed
    probe_stale: str | None = None  # why the probe's figures may read slow (probe_cache.py); None: trusted

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"


def cpu_capability() -> str:
    """The SIMD level torch dispatches to on this CPU, e.g. ``AVX512`` or ``AVX2``, plus bf16/amx flags."""
    cap = torch.backends.cpu.get_cpu_capability()
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    extra = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return "+".join([cap, *extra])


def _gflops(dtype: torch.dtype, seconds: float = 0.03) -> float:
    # Shapes like the model's MLP at a mid-size batch, so the probe measures the kernel the engine will use.
    a = torch.randn(256, 576, dtype=dtype)
    w = torch.randn(1536, 576, dtype=dtype)
    a @ w.T
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        a @ w.T
        n += 1
    return 2 * 256 * 576 * 1536 * n / elapsed / 1e9


@cache
def _probe() -> SpeedFigure:
    # Remembered per CPU, torch build and thread count in the cache dir (probe_cache.py): a fresh process
    # skips the ~0.25 s probe and every process on the machine picks the same dtype. The fastest
    # measurement kept is the truest (other work only slows a probe); its sum of both dtypes ranks them.
    return remembered_speed(
        "matmul", {"threads": torch.get_num_threads()}, _measure_probe, score=lambda v: float(v[0]) + float(v[1])
    )


def _speeds() -> tuple[float, float]:
    fp32, bf16 = _probe().value
    return float(fp32), float(bf16)


def _measure_probe() -> tuple[float, float]:
    # Two alternating rounds, best of each: the first matmuls of a process pay one-time set-up
    # (thread pool, kernel selection) that would otherwise make whichever dtype runs first look slow.
    fp32 = bf16 = 0.0
    for _ in range(2):
        fp32 = max(fp32, _gflops(torch.float32))
        bf16 = max(bf16, _gflops(torch.bfloat16))
    return fp32, bf16


def matmul_gflops(dtype: torch.dtype) -> float:
    """Probe GFLOP/s of this CPU for ``dtype`` (remembered per machine, see `_probe`)."""
    fp32, bf16 = _speeds()
    return bf16 if dtype == torch.bfloat16 else fp32


def choose_dtype(requested: str | torch.dtype | None = "auto") -> DtypeChoice:
    """Resolve ``auto``/``bf16``/``fp32`` to a torch dtype. ``auto`` runs a ~60 ms probe once per process."""
    if isinstance(requested, torch.dtype):
        if requested not in (torch.float32, torch.bfloat16):
            raise InvalidRequestError(f"dtype must be bf16 or fp32, got {requested}")
        return DtypeChoice(requested, "requested", {})
    if requested is None or requested == "auto":
        fp32, bf16 = _speeds()
        stale = _probe().stale
        speeds = {"fp32": round(fp32, 1), "bf16": round(bf16, 1)}
        note = f" ({stale})" if stale else ""
        if bf16 > fp32 * 1.2:
            return DtypeChoice(torch.bfloat16, f"auto: bf16 {bf16:.0f} > fp32 {fp32:.0f} GFLOP/s{note}", speeds, stale)
        return DtypeChoice(torch.float32, f"auto: fp32 {fp32:.0f} >= bf16 {bf16:.0f} GFLOP/s{note}", speeds, stale)
    if requested not in _DTYPES:
        raise InvalidRequestError(f"dtype must be 'auto', 'bf16' or 'fp32', got {requested!r}")
    return DtypeChoice(_DTYPES[requested], "requested", {})


# ---- the weight format ----------------------------------------------------------------------------
PROBE_BATCHES = (1, 64)  # decode of one request, and of a full batch: int8/int4 kernels must win at both
PROBE_MAX_ELEMENTS = 16 * 2**20  # the probe weight is the model's MLP shape, capped at 64 MiB in fp32
SPEED_MARGIN = 1.2  # a quantized format must be this much faster than the float one at every probe batch
MIN_PARAMS_FOR_SPEED = 10**9  # below this, int8/int4 change greedy outputs too often to be picked for speed
MEMORY_FRACTION = 0.9  # of the memory available at load, what the weights and the KV pool may take


@dataclass(frozen=True)
class WeightsChoice:
    name: str  # fp32 | bf16 | int8 | int4
    reason: str
    probe_us: dict[str, dict[int, float]]  # microseconds per product by format and batch; empty when not probed
    bytes_by_format: dict[str, int]  # resident weight bytes each candidate format would take (auto only)
    budget_bytes: int | None  # what the weights may take (auto only; None when memory is unknown)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _best_seconds(layer: LinearLayer, x: torch.Tensor, seconds: float) -> float:
    layer(x)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < t_end:
        layer(x)
        best = min(best, time.perf_counter() - t0)
    return best


@cache
def weight_format_probe(
    out_features: int, in_features: int, dtype: torch.dtype, seconds: float = 0.02
) -> tuple[tuple[str, int, float], ...]:
    """``(format, batch, seconds per product)`` of a ``[out, in]`` weight in the float format of ``dtype``,
    int8 and int4 (when the int4 kernel takes the shape), at each of `PROBE_BATCHES`; measured once per
    process and shape. Best of each, in two alternating rounds, as the dtype probe does."""
    cpu = torch.device("cpu")
    out = min(out_features, max(16, PROBE_MAX_ELEMENTS // in_features // 16 * 16))
    weight = 0.02 * torch.randn(out, in_features, generator=torch.Generator().manual_seed(0))
    pack = packing_available(cpu, dtype)
    formats = [float_format_name(dtype), "int8", "int4"]
    layers = {name: WeightFormat(name, dtype, cpu, pack).linear(weight) for name in formats}
    if layers["int4"].format != "int4":  # the int4 kernel does not take this shape
        del layers["int4"]
    inputs = {b: torch.randn(b, in_features).to(dtype) for b in PROBE_BATCHES}
    best: dict[tuple[str, int], float] = {}
    for _ in range(2):
        for name, layer in layers.items():
            for b, x in inputs.items():
                t = _best_seconds(layer, x, seconds)
                best[name, b] = min(best.get((name, b), t), t)
    return tuple((name, b, t) for (name, b), t in best.items())


def choose_weights(
    requested: str, dtype: torch.dtype, config: ModelConfig, device: torch.device, reserved_bytes: int = 0
) -> WeightsChoice:
    """Resolve ``weights=`` (validated by `quantized_linear.check_weight_format`) for a model and dtype.

    ``auto`` keeps the float format of ``dtype`` (the engine's behaviour before weight formats) unless
    (1) its weights do not fit ``MEMORY_FRACTION`` of the available memory less ``reserved_bytes`` (the
    KV pool): then int8, or int4 when int8 does not fit either; or (2) the model has at least
    ``MIN_PARAMS_FOR_SPEED`` parameters and the probe shows int8 ``SPEED_MARGIN`` times faster than
    the float format at every probe batch. int4 is never picked for speed alone.
    """
    float_name = float_format_name(dtype)
    if requested != "auto":
        return WeightsChoice(requested, "requested", {}, {}, None)
    if device.type != "cpu":
        return WeightsChoice(float_name, f"auto: {float_name}, the dtype (int8/int4 run on CPU only)", {}, {}, None)
    sizes = {name: weight_bytes(config, name) for name in (float_name, "int8", "int4")}
    available = available_memory()
    budget = None if available is None else int(available * MEMORY_FRACTION) - reserved_bytes
    gib = 2**30
    if budget is not None and sizes[float_name] > budget:
        name = "int8" if sizes["int8"] <= budget else "int4"
        fits = "" if sizes[name] <= budget else " (it does not fit either: the smallest format)"
        return WeightsChoice(
            name,
            f"auto: {name}{fits}: {float_name} weights need {sizes[float_name] / gib:.2f} GiB but the budget is "
            f"{budget / gib:.2f} GiB ({MEMORY_FRACTION:.0%} of available memory less the KV pool); "
            f"{name} needs {sizes[name] / gib:.2f} GiB",
            {},
            sizes,
            budget,
        )
    fit = "unknown memory" if budget is None else f"fit the {budget / gib:.1f} GiB budget"
    params = weight_bytes(config, "fp32") // 4
    if params < MIN_PARAMS_FOR_SPEED:
        return WeightsChoice(
            float_name,
            f"auto: {float_name}, the dtype: its {sizes[float_name] / 2**20:.0f} MiB of weights {fit}, and "
            f"int8/int4 are not picked for speed below {MIN_PARAMS_FOR_SPEED / 1e9:.0f}B parameters "
            f"({params / 1e6:.0f}M here), where they change greedy outputs (bench/quantized_weights.py)",
            {},
            sizes,
            budget,
        )
    timings = weight_format_probe(2 * config.intermediate_size, config.hidden_size, dtype)
    probe: dict[str, dict[int, float]] = {}
    for name, b, t in timings:
        probe.setdefault(name, {})[b] = round(t * 1e6, 1)
    speedups = {b: probe[float_name][b] / probe["int8"][b] for b in PROBE_BATCHES}
    shown = ", ".join(f"{s:.2f}x at batch {b}" for b, s in speedups.items())
    if all(s >= SPEED_MARGIN for s in speedups.values()):
        return WeightsChoice(
            "int8", f"auto: int8: its products run {shown} the {float_name} speed; weights {fit}", probe, sizes, budget
        )
    return WeightsChoice(
        float_name,
        f"auto: {float_name}, the dtype: int8 products run {shown} the {float_name} speed "
        f"(int8 is picked only at {SPEED_MARGIN}x or more at every batch); weights {fit}",
        probe,
        sizes,
        budget,
    )
