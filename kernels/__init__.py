"""Triton kernels (paged attention, KV block copy) and their torch references.

Importing this package never imports triton: the torch references and `copy_blocks` (the one KV
block copy, which imports its Triton kernel only when it runs on a GPU) are here directly, and the
Triton attention wrappers load on first access (`halo.kernels.paged_decode_attention`, or
`from halo.kernels import store_kv`). Check `triton_available()` before using them. Under
TRITON_INTERPRET=1 the variable must be set before that first access; Triton fixes the mode when
a kernel module is imported.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch

from .block_copy import CopyBackend, copy_backend_for, copy_blocks
from .layout import BlockIds
from .reference import (
    copy_blocks_ref,
    paged_decode_attention_ref,
    paged_prefill_attention_ref,
    store_kv_ref,
)

# The Triton wrappers are left out of __all__ so that `import *` never imports triton.
__all__ = [
    "BlockIds",
    "CopyBackend",
    "copy_backend_for",
    "copy_blocks",
    "copy_blocks_ref",
    "paged_decode_attention_ref",
    "paged_prefill_attention_ref",
    "store_kv_ref",
    "triton_available",
]

_TRITON_ATTRS = {
    "paged_decode_attention": "triton_paged_attention",
    "paged_prefill_attention": "triton_paged_attention",
    "store_kv": "triton_paged_attention",
}


def triton_available() -> bool:
    """Whether the Triton kernels can run here: triton imports, and a GPU or the interpreter exists."""
    try:
        import triton  # noqa: F401
    except Exception:  # missing, or installed but broken: either way unusable
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def __getattr__(name: str) -> Any:
    module = _TRITON_ATTRS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
