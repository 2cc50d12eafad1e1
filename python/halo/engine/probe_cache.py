"""Start-up probe results remembered across processes, per machine, in ``<cache dir>/probe``.

The engine measures a few facts of this machine when it starts: which dtype multiplies faster
(dtype_probe.py) and whether oneDNN's packed products equal ``F.linear``'s for each weight shape
(linear.py). They depend on the CPU, the torch build and the thread count, not on the process, so
the first process stores each result and later ones read it instead of measuring again (a start-up
cost of a second or more on a loaded 2-core machine). A result is keyed by the CPU (model name and
instruction-set flags), torch's version and SIMD level, and the caller's own key; delete the folder
to measure again. Writes are atomic (temporary file, rename): a reader sees no result or a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import cache
from typing import Any

import torch

from halo.engine.model_source import default_cache_dir


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


def remembered(name: str, key: dict[str, Any], measure: Callable[[], Any]) -> Any:
    """``measure()``'s JSON-able result for ``key`` on this machine: read if stored, else measured and stored."""
    ident = json.dumps({"machine": machine_identity(), **key}, sort_keys=True)
    path = default_cache_dir() / "probe" / f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("ident") == ident:
            return saved["value"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # absent or damaged: measure
    value = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"ident": ident, "value": value}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache dir only costs the next process its own measurement
    return value
