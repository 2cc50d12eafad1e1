"""The process's native CPU kernel objects (``halo._core``): one per kernel class and thread count.

Each holds its worker threads (or none, on OpenMP: csrc/worker_pool.h) and scratch, so every layer's
call reuses it. None where the core was built before the class existed: the callers keep a torch path.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def native_kernel(name: str, num_threads: int) -> Any | None:
    """``halo._core.<name>(num_threads)``, the same object for every caller, or None."""
    try:
        from halo import _core
    except ImportError:
        return None
    cls = getattr(_core, name, None)
    return None if cls is None else cls(num_threads)
