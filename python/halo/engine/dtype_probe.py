"""Pick the engine's compute dtype by measuring matmul speed on this CPU (bf16 only where it wins)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from functools import cache

import torch

from halo.engine.model_source import default_cache_dir
from halo.errors import InvalidRequestError

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str
    gflops: dict[str, float]  # probe GFLOP/s per dtype name ("bf16", "fp32"); empty when not probed

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
def _probe() -> tuple[float, float]:
    # Measured once per CPU, thread count and torch build and kept in the cache dir: a fresh process
    # skips the ~0.25 s probe and every process on the machine picks the same dtype (delete to re-probe).
    ident = f"{cpu_capability()} {platform.processor() or platform.machine()} torch {torch.__version__} "
    ident += f"threads {torch.get_num_threads()}"
    path = default_cache_dir() / "probe" / f"matmul-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return float(saved["fp32"]), float(saved["bf16"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    fp32, bf16 = _measure_probe()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fp32": fp32, "bf16": bf16, "cpu": ident}), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a concurrent reader sees no file or a whole one
    except OSError:
        pass  # a read-only cache dir only costs the next process its own probe
    return fp32, bf16


def _measure_probe() -> tuple[float, float]:
    # Two alternating rounds, best of each: the first matmuls of a process pay one-time set-up
    # (thread pool, kernel selection) that would otherwise make whichever dtype runs first look slow.
    fp32 = bf16 = 0.0
    for _ in range(2):
        fp32 = max(fp32, _gflops(torch.float32))
        bf16 = max(bf16, _gflops(torch.bfloat16))
    return fp32, bf16


def matmul_gflops(dtype: torch.dtype) -> float:
    """Probe GFLOP/s of this CPU for ``dtype`` (measured once per process)."""
    fp32, bf16 = _probe()
    return bf16 if dtype == torch.bfloat16 else fp32


def choose_dtype(requested: str | torch.dtype | None = "auto") -> DtypeChoice:
    """Resolve ``auto``/``bf16``/``fp32`` to a torch dtype. ``auto`` runs a ~60 ms probe once per process."""
    if isinstance(requested, torch.dtype):
        if requested not in (torch.float32, torch.bfloat16):
            raise InvalidRequestError(f"dtype must be bf16 or fp32, got {requested}")
        return DtypeChoice(requested, "requested", {})
    if requested is None or requested == "auto":
        fp32, bf16 = _probe()
        speeds = {"fp32": round(fp32, 1), "bf16": round(bf16, 1)}
        if bf16 > fp32 * 1.2:
            return DtypeChoice(torch.bfloat16, f"auto: bf16 {bf16:.0f} > fp32 {fp32:.0f} GFLOP/s", speeds)
        return DtypeChoice(torch.float32, f"auto: fp32 {fp32:.0f} >= bf16 {bf16:.0f} GFLOP/s", speeds)
    if requested not in _DTYPES:
        raise InvalidRequestError(f"dtype must be 'auto', 'bf16' or 'fp32', got {requested!r}")
    return DtypeChoice(_DTYPES[requested], "requested", {})
