"""Where an engine step's wall time goes: wall-clock timers around the step's parts, in one process.

Used by ``bench/engine_throughput.py --profile``. Method: careful timers, not torch.profiler. On CPU
every torch call is synchronous, so ``time.perf_counter`` around a call measures it exactly; the
profiler instead adds a few microseconds to every aten op, which at decode batch 1 (a few hundred
ops per step) is a large share of what it would be measuring. The timers wrap, on one engine
instance and only while a `StepTimers` is installed, the engine's own seams:

- the weight products of every layer (``model.linears``: QKV, O, gate/up, down) -> ``linear``;
- the head (``model.lm_head``) -> ``lm_head``;
- the attention backend's ``decode_step`` (and the per-layer calls it returns), ``decode_attention`` and
  ``prefill_attention`` -> ``attention``;
- the KV store (``kv.store``), or RoPE and the store where one native call does both (``cpu_rope``) ->
  ``kv_store``;
- the norms (``model.norm``) and the activation (``model.act``) -> ``norm``, ``activation``;
- the rest of ``model.forward`` (embedding lookup, RoPE, residual adds, chunk/mul, the final row
  gather) -> ``forward_other`` (forward's time minus the parts above);
- ``runner.prepare`` (the StepContext) -> ``step_context``; the speculator's ``propose`` and
  ``batch_scheduler.schedule`` -> ``scheduler``; ``engine._select`` (masks, token choice,
  logprobs) -> ``sampling``; the rest of ``engine.step`` (counters, accepting tokens, stop checks,
  publishing blocks, finishing) -> ``engine_other``.

Each timer adds two clock reads and one Python call (~0.3 us); the report prints the instrumented
step time beside the plain one so the distortion is visible. ``dispatch_estimate`` counts the torch
calls a step makes (a ``TorchFunctionMode`` over one separate step) times the measured cost of a
trivial torch call: the share of the step that is per-call Python/dispatch overhead, spread over
the categories above rather than a category of its own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from halo.engine import cpu_rope
from torch.overrides import TorchFunctionMode

CATEGORIES = (
    "linear",
    "lm_head",
    "attention",
    "kv_store",
    "norm",
    "activation",
    "forward_other",
    "step_context",
    "scheduler",
    "sampling",
    "engine_other",
)


@dataclass
class StepTimers:
    """Accumulated seconds per category over the timed steps (see the module docstring)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    step_seconds: float = 0.0
    steps: int = 0
    _restore: list[Callable[[], None]] = field(default_factory=list)

    def _timed(self, category: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        acc = self.seconds
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[category] += clock() - t0

        return timed

    def _patch(self, obj: Any, name: str, category: str) -> None:
        had = name in vars(obj) if hasattr(obj, "__dict__") else False
        old = getattr(obj, name)
        setattr(obj, name, self._timed(category, old))
        self._restore.append((lambda: setattr(obj, name, old)) if had else (lambda: delattr(obj, name)))

    def install(self, engine: Any) -> StepTimers:
        model, runner = engine.model, engine.runner
        for layer in model.linears:
            for name, lin in list(layer.items()):
                layer[name] = self._timed("linear", lin)
                self._restore.append(lambda layer=layer, name=name, lin=lin: layer.__setitem__(name, lin))
        head = model.lm_head
        model.lm_head = self._timed("lm_head", head)
        self._restore.append(lambda: setattr(model, "lm_head", head))
        backend = model.attention
        proxy = SimpleNamespace(**{k: getattr(backend, k) for k in dir(backend) if not k.startswith("__")})
        proxy.__name__ = backend.__name__
        proxy.decode_attention = self._timed("attention", backend.decode_attention)
        # the model builds the step's decode attention once (its checks count too) and calls it per layer
        timed_decode_step = self._timed("attention", backend.decode_step)
        proxy.decode_step = lambda kv, ctx: self._timed("attention", timed_decode_step(kv, ctx))
        proxy.prefill_attention = self._timed("attention", backend.prefill_attention)
        model.attention = proxy
        self._restore.append(lambda: setattr(model, "attention", backend))
        # RoPE with the KV store, where one native call per layer does both (engine/cpu_rope.py)
        builder = cpu_rope.rope_store
        timed_builder = self._timed("kv_store", builder)

        def rope_store(*args: Any, **kwargs: Any) -> Any:
            store = timed_builder(*args, **kwargs)
            return None if store is None else self._timed("kv_store", store)

        cpu_rope.rope_store = rope_store
        self._restore.append(lambda: setattr(cpu_rope, "rope_store", builder))
        for obj, name, cat in (
            (model, "norm", "norm"),
            (model, "act", "activation"),
            (engine.kv, "store", "kv_store"),
            (runner, "prepare", "step_context"),
            (engine.batch_scheduler, "schedule", "scheduler"),
            (engine.speculator, "propose", "scheduler"),
            (engine, "_select", "sampling"),
        ):
            self._patch(obj, name, cat)
        # forward last: its timer measures the whole forward; forward_other is what the parts leave
        forward = model.forward
        inner = ("linear", "lm_head", "attention", "kv_store", "norm", "activation")

        def timed_forward(ctx: Any, kv: Any) -> torch.Tensor:
            before = sum(self.seconds[c] for c in inner)
            t0 = time.perf_counter()
            out = forward(ctx, kv)
            spent = time.perf_counter() - t0
            self.seconds["forward_other"] += spent - (sum(self.seconds[c] for c in inner) - before)
            return out

        model.forward = timed_forward
        self._restore.append(lambda: delattr(model, "forward"))
        step = engine.step

        def timed_step() -> Any:
            before = sum(self.seconds.values())
            t0 = time.perf_counter()
            out = step()
            spent = time.perf_counter() - t0
            self.seconds["engine_other"] += spent - (sum(self.seconds.values()) - before)
            self.step_seconds += spent
            self.steps += 1
            return out

        engine.step = timed_step
        self._restore.append(lambda: delattr(engine, "step"))
        return self

    def uninstall(self) -> None:
        while self._restore:
            self._restore.pop()()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(CATEGORIES, 0.0)
        self.step_seconds = 0.0
        self.steps = 0


class _CountCalls(TorchFunctionMode):
    """Counts torch-level calls by the function that made them (``module.function``)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_caller: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.endswith(("torch/overrides.py", "torch/_tensor.py")):
            frame = frame.f_back
        where = "?" if frame is None else f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}"
        self.by_caller[where] = self.by_caller.get(where, 0) + 1
        return func(*args, **(kwargs or {}))


def torch_calls_per_step(engine: Any) -> dict[str, int]:
    """Torch-level calls (functions, methods, indexing) one ``engine.step()`` makes, by calling function."""
    mode = _CountCalls()
    with mode:
        engine.step()
    return dict(sorted(mode.by_caller.items(), key=lambda kv: -kv[1]))


def trivial_call_seconds(repeats: int = 20000) -> float:
    """Seconds of one trivial torch call (an add of two 1-element tensors, inference mode): dispatch alone."""
    a, b = torch.ones(1), torch.ones(1)
    with torch.inference_mode():
        for _ in range(1000):
            a + b
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeats // 5):
                a + b
            best = min(best, (time.perf_counter() - t0) / (repeats // 5))
    return best


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy, read plus written (STREAM "copy" counting), best of ``repeats``."""
    n = megabytes * 2**20 // 4
    src = torch.ones(n)
    dst = torch.empty(n)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of reading a large tensor once (a sum), best of ``repeats``: what weight streaming needs."""
    n = megabytes * 2**20 // 4
    src = torch.ones(n)
    src.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        src.sum()
        best = min(best, time.perf_counter() - t0)
    return n * 4 / best
