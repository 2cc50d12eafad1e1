"""Start-up probe results remembered across processes, per machine, in ``<cache dir>/probe``.

The engine measures a few facts of this machine when it starts: which dtype multiplies faster
(dtype_probe.py) and whether oneDNN's packed products equal ``F.linear``'s for each weight shape
(linear.py). They depend on the CPU, the torch build and the thread count, not on the process, so
the first process stores each result and later ones read it instead of measuring again (a start-up
cost of a second or more on a loaded 2-core machine). A result is keyed by the CPU (model name and
instruction-set flags), torch's version and SIMD level, and the caller's own key; delete the folder
to measure again. Writes are atomic (temporary file, rename): a reader sees no result or a whole one.

A verdict (`remembered`: the packing check) is a fact of the build and is kept for good. A speed
(`remembered_speed`: the matmul probe) is not: other work on the machine can only slow a probe down,
so a figure taken on a loaded machine would otherwise steer every later process. Each speed record
keeps the last few measurements with their time and the load average they were taken under, and
the figure used is the best one younger than `MAX_AGE_S` (a later measurement far below it never
replaces it). It is measured again at a start when none is young enough (absent, damaged, of the
older format, or all over `MAX_AGE_S`), or when the best was taken on a busy machine (`BUSY_LOAD`)
and the machine is quieter now, at most once per `RETAKE_AFTER_S`. A figure still taken under load is
returned with a `stale` note that the engine shows beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import torch

from halo.engine.model_source import default_cache_dir

MAX_AGE_S = 7 * 86400.0  # a speed figure older than this is measured again (a new host under the same CPU name)
BUSY_LOAD = 0.5  # 1-minute load average per CPU from which a speed probe competes with other work
RETAKE_AFTER_S = 600.0  # a figure taken under load is re-measured at most this often (a busy machine stays busy)
KEEP = 8  # measurements a speed record keeps


@cache
def machine_identity() -> str:
    """The CPU (model name, instruction-set flags) and the torch build the probes ran on."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags_hash = hashlib.sha256(flags.encode()).hexdigest()[:16]
    return f"{model} flags {flags_hash} torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}"


def _record_path(name: str, key: dict[str, Any]) -> tuple[Path, str]:
    ident = json.dumps({"machine": machine_identity(), **key}, sort_keys=True)
    return default_cache_dir() / "probe" / f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json", ident


def _read(path: Path, ident: str) -> dict[str, Any] | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(saved, dict) and saved.get("ident") == ident:
            return saved
    except (OSError, ValueError):
        pass  # absent or damaged: measure
    return None


def _write(path: Path, record: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache dir only costs the next process its own measurement


def remembered(name: str, key: dict[str, Any], measure: Callable[[], Any]) -> Any:
    """``measure()``'s JSON-able result for ``key`` on this machine: read if stored, else measured and stored."""
    path, ident = _record_path(name, key)
    saved = _read(path, ident)
    if saved is not None and "value" in saved:
        return saved["value"]
    value = measure()
    _write(path, {"ident": ident, "value": value})
    return value


@dataclass(frozen=True)
class Measurement:
    """One speed measurement: its value, when (unix seconds) and under what load it was taken."""

    value: Any
    at: float
    load: float | None  # 1-minute load average per CPU when it was taken; None where unknown

    @property
    def busy(self) -> bool:
        return self.load is not None and self.load >= BUSY_LOAD


@dataclass(frozen=True)
class SpeedFigure:
    """What `remembered_speed` answers: the figure to use and whether it can be trusted."""

    value: Any
    measured: Measurement
    measured_now: bool  # this process took the measurement
    stale: str | None  # why the figure may read slow (None: taken on a quiet machine); said beside it


def load_per_cpu() -> float | None:
    """The 1-minute load average per CPU now (None where the platform has none)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


def _now() -> float:
    return time.time()


def remembered_speed(
    name: str, key: dict[str, Any], measure: Callable[[], Any], score: Callable[[Any], float]
) -> SpeedFigure:
    """The best young enough measurement of ``measure()`` for ``key`` on this machine (``score``: higher
    is faster), measured now where the module docstring's rules say so and stored with its time and load."""
    path, ident = _record_path(name, key)
    now, load = _now(), load_per_cpu()
    saved = _read(path, ident) or {}
    kept = [m for m in _measurements(saved.get("measurements")) if 0 <= now - m.at <= MAX_AGE_S]
    last_try = max((m.at for m in kept), default=None)
    best = max(kept, key=lambda m: score(m.value), default=None)
    quieter = load is None or best is None or best.load is None or load < best.load
    due = best is None or (best.busy and quieter and last_try is not None and now - last_try >= RETAKE_AFTER_S)
    measured_now = False
    if due:
        fresh = Measurement(measure(), now, load)
        kept = [*kept, fresh][-KEEP:]
        _write(path, {"ident": ident, "measurements": [m.__dict__ for m in kept]})
        best = max(kept, key=lambda m: score(m.value))
        measured_now = best is fresh
    assert best is not None
    return SpeedFigure(best.value, best, measured_now, _stale_note(best, now))


def _measurements(raw: Any) -> list[Measurement]:
    out = []
    for item in raw if isinstance(raw, list) else []:
        try:
            load = item.get("load")
            out.append(Measurement(item["value"], float(item["at"]), None if load is None else float(load)))
        except (AttributeError, KeyError, TypeError, ValueError):
            continue  # a damaged entry counts as absent
    return out


def _stale_note(best: Measurement, now: float) -> str | None:
    if not best.busy:
        return None
    when = datetime.fromtimestamp(best.at).strftime("%Y-%m-%d %H:%M")
    age_min = (now - best.at) / 60
    return (
        f"stale: probe taken under load {best.load:.1f}/CPU at {when} ({age_min:.0f} min ago); "
        f"re-measured at a quieter start"
    )
