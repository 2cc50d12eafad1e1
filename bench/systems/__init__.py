"""The systems the benchmark compares, all on one compiled app (same engine, model, data):

- `serial`: one row at a time, node by node, every call isolated (`app.run(plan="serial")`);
- `per-call`: a task per row walking the DAG against one continuously batching engine (per_call.py);
- `opwise`: one node at a time over the whole batch (opwise.py);
- `halo`: the full system (`app.run()`);
- `halo-rerun` (named only, not in `all`): halo with its persistent result cache on, in a fresh
  cache folder: the batch runs once untimed, then again; the second run is measured (what an edited or
  repeated batch costs when every unchanged call comes from the cache);
- optional `vllm-per-call`: the per-call pattern against vLLM's CPU build in a venv of its own
  (vllm_per_call.py); not in `SYSTEMS`, it runs only when a vLLM interpreter is given.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from halo.runtime.compiled import CompiledWorkflow

from bench.systems.opwise import run_opwise
from bench.systems.per_call import run_per_call
from bench.systems.system_run import SystemRun
from bench.systems.vllm_per_call import VllmBackend, backend_from, run_vllm_per_call

SYSTEMS = ("serial", "per-call", "opwise", "halo")
NAMED_SYSTEMS = ("halo-rerun",)  # run only when named in --systems
OPTIONAL_SYSTEMS = ("vllm-per-call",)  # need software outside the project (docs/vllm_baseline.md)


def run_system(
    name: str,
    app: CompiledWorkflow,
    rows: Sequence[Mapping[str, Any]],
    allowed_hosts: Collection[str] = (),
    vllm: VllmBackend | None = None,
) -> SystemRun:
    """Run `rows` through `app` the way system `name` does; every system starts with a cold prefix cache.
    `vllm` is the suite's vLLM server holder (None: one is started from $HALO_VLLM_PYTHON for this call)."""
    if name == "vllm-per-call":
        return run_vllm_per_call(app, rows, vllm, allowed_hosts)
    if name == "per-call":
        return run_per_call(app, rows, allowed_hosts)
    if name == "opwise":
        return run_opwise(app, rows, allowed_hosts)
    if name == "halo-rerun":
        return _rerun(app, rows)
    if name in ("serial", "halo"):
        app.engine().reset_prefix_cache()
        return SystemRun.from_result(name, app.run(list(rows), plan="serial" if name == "serial" else None))
    raise ValueError(f"unknown system {name!r} (known: {', '.join(SYSTEMS + NAMED_SYSTEMS + OPTIONAL_SYSTEMS)})")


def _rerun(app: CompiledWorkflow, rows: Sequence[Mapping[str, Any]]) -> SystemRun:
    with tempfile.TemporaryDirectory(prefix="halo-rerun-") as folder:
        previous = app.cache_dir  # the bench's app never uses the cache otherwise (compiled cache=False)
        app.cache_dir = folder
        try:
            app.engine().reset_prefix_cache()
            app.run(list(rows), cache=True)
            app.engine().reset_prefix_cache()
            return SystemRun.from_result("halo-rerun", app.run(list(rows), cache=True))
        finally:
            app.cache_dir = previous


__all__ = ["OPTIONAL_SYSTEMS", "SYSTEMS", "SystemRun", "VllmBackend", "backend_from", "run_system"]
