"""LatencyCurves: how long one model's prefill and decode steps take on one machine, fitted from measurements.

Two per-step curves, both linear in their coefficients so a (non-negative) least-squares fit is exact
to compute and cheap to evaluate inside the plan search:

    prefill_s(new, cached, batch) = a·steps + b·batch·new + c·batch·new·(cached + new/2)
    decode_step_s(batch, context) = d + e·batch + f·batch·context

``a``/``d`` are the per-step overhead (Python, scheduling, sampling launch), ``b``/``e`` the per-token
weight matmuls, and ``c``/``f`` attention, which grows with the context each new token attends to
(a prefill chunk's ``new`` tokens see on average ``cached + new/2`` keys). Cached prefix tokens cost no
prefill of their own: they only lengthen the context of the new ones.

The same profile records the model's load time (engine construction: read, convert, place the
weights) and its KV copy cost (bytes per token of K/V, bytes per second through
``export_prefix``/``import_prefix``), which price model switches and KV moves between workers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


class PrefillSample(NamedTuple):
    """One measured engine step that prefilled ``batch`` prompts of ``new`` uncached tokens each."""

    new: int
    cached: int
    batch: int
    seconds: float


class DecodeSample(NamedTuple):
    """One measured pure-decode step: ``batch`` sequences with ``context`` tokens already in KV."""

    batch: int
    context: float
    seconds: float


@dataclass(frozen=True)
class LatencyCurves:
    """Fitted prefill and decode latency of one (model, dtype, weights, device, threads) on this machine."""

    model: str
    dtype: str
    device: str
    threads: int
    prefill: tuple[float, float, float]  # a (s/step), b (s/token), c (s/token/context token)
    decode: tuple[float, float, float]  # d (s/step), e (s/sequence), f (s/sequence/context token)
    step_tokens: int = 1024  # the engine's token budget per step: longer prefills are chunked
    source: str = "profiled"  # "profiled" (measured here) or "default" (built in, not this machine)
    fit_error: float = 0.0  # largest relative error of the fit on its own samples
    model_load_s: float | None = None  # measured engine construction time (None: not measured)
    kv_bytes_per_token: float | None = None  # K and V of one token over all layers
    kv_bytes_per_s: float | None = None  # measured export + import of a cached prefix
    weights: str | None = None  # the weight format profiled: int8/int4; None for weights in the dtype
    facts: dict[str, Any] = field(default_factory=dict, compare=False)  # cpu, probe GFLOP/s, samples

    # ---- the curves --------------------------------------------------------------------------
    def prefill_s(self, new_tokens: int, cached_tokens: int = 0, batch: int = 1) -> float:
        """Seconds to prefill ``batch`` prompts of ``new_tokens`` uncached tokens after ``cached_tokens``."""
        if new_tokens <= 0 or batch <= 0:
            return 0.0
        a, b, c = self.prefill
        tokens = batch * new_tokens
        steps = math.ceil(tokens / self.step_tokens)
        return a * steps + b * tokens + c * tokens * (cached_tokens + new_tokens / 2)

    def decode_step_s(self, batch: int, context: float) -> float:
        """Seconds of one decode step for ``batch`` sequences with ``context`` tokens of context each."""
        if batch <= 0:
            return 0.0
        d, e, f = self.decode
        return d + e * batch + f * batch * context

    def generate_s(self, prompt_tokens: int, cached_tokens: int = 0, output_tokens: int = 1, batch: int = 1) -> float:
        """Seconds for ``batch`` requests of one shape: prefill (which samples the first token) + decode.

        Decode step ``i`` (1 ≤ i < output_tokens) attends over ``prompt_tokens + i`` tokens.
        """
        cached = min(cached_tokens, prompt_tokens)
        total = self.prefill_s(prompt_tokens - cached, cached, batch)
        steps = max(0, output_tokens - 1)
        if steps:
            d, e, f = self.decode
            mean_context = prompt_tokens + (steps + 1) / 2
            total += steps * (d + e * batch + f * batch * mean_context)
        return total

    def score_s(
        self, prompt_tokens: int, cached_tokens: int = 0, option_tokens: Sequence[int] = (), batch: int = 1
    ) -> float:
        """Seconds for ``batch`` choice-scoring requests of one shape (``choice_mode: score``): no decode.

        The engine prefills the prompt (its last row scores every option's first token), then, in one
        batched prefill after the shared prompt KV, each option's tokens but its last: an option of ``k``
        tokens computes ``k - 1`` tokens that attend on average over ``prompt_tokens + (k - 1) / 2``
        keys (docs/structured_outputs.md, "Choice scoring")."""
        cached = min(cached_tokens, prompt_tokens)
        total = self.prefill_s(prompt_tokens - cached, cached, batch)
        extra = [k - 1 for k in option_tokens if k > 1]
        if extra and batch > 0:
            a, b, c = self.prefill
            tokens = batch * sum(extra)
            attended = sum(k * (prompt_tokens + k / 2) for k in extra)
            total += a * math.ceil(tokens / self.step_tokens) + b * tokens + c * batch * attended
        return total

    def kv_move_s(self, tokens: int, batch: int = 1) -> float | None:
        """Seconds to move the KV of ``batch`` prefixes of ``tokens`` tokens to another worker (None: unmeasured)."""
        if not self.kv_bytes_per_token or not self.kv_bytes_per_s:
            return None
        return max(0, tokens) * max(0, batch) * self.kv_bytes_per_token / self.kv_bytes_per_s

    # ---- JSON --------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LatencyCurves:
        raw = json.loads(text)
        raw["prefill"] = tuple(float(x) for x in raw["prefill"])
        raw["decode"] = tuple(float(x) for x in raw["decode"])
        return cls(**raw)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)  # readers never see a half-written profile
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyCurves:
        return cls.from_json(Path(path).read_text())

    def describe(self) -> str:
        a, b, c = self.prefill
        d, e, f = self.decode
        return "\n".join(
            [
                f"latency curves: model={self.model} dtype={self.dtype} weights={self.weights or self.dtype} "
                f"device={self.device} threads={self.threads} "
                f"({self.source}, fit error {self.fit_error:.1%})",
                f"  prefill_s = {a * 1e3:.3f} ms·steps + {b * 1e6:.2f} µs·tokens "
                f"+ {c * 1e9:.3f} ns·tokens·(cached + new/2)   [steps of {self.step_tokens} tokens]",
                f"  decode_step_s = {d * 1e3:.3f} ms + {e * 1e6:.2f} µs·batch + {f * 1e9:.3f} ns·batch·context",
                "  model load: " + ("not measured" if self.model_load_s is None else f"{self.model_load_s:.2f} s"),
                "  KV copy: "
                + (
                    "not measured"
                    if not self.kv_bytes_per_s or not self.kv_bytes_per_token
                    else f"{self.kv_bytes_per_token / 1024:.1f} KiB/token at {self.kv_bytes_per_s / 1e9:.2f} GB/s"
                ),
            ]
        )


def fit_latency_curves(
    prefill: Sequence[PrefillSample],
    decode: Sequence[DecodeSample],
    *,
    model: str,
    dtype: str,
    device: str,
    threads: int,
    step_tokens: int = 1024,
    facts: dict[str, Any] | None = None,
) -> LatencyCurves:
    """Non-negative least squares on relative error (every sample counts alike, fast or slow)."""
    if len(prefill) < 3 or len(decode) < 3:
        raise ValueError(f"need at least 3 prefill and 3 decode samples, got {len(prefill)} and {len(decode)}")
    p_rows = [
        [math.ceil(s.batch * s.new / step_tokens), s.batch * s.new, s.batch * s.new * (s.cached + s.new / 2)]
        for s in prefill
    ]
    p_coef, p_err = _relative_nnls(np.array(p_rows, dtype=float), np.array([s.seconds for s in prefill]))
    d_rows = [[1.0, s.batch, s.batch * s.context] for s in decode]
    d_coef, d_err = _relative_nnls(np.array(d_rows, dtype=float), np.array([s.seconds for s in decode]))
    return LatencyCurves(
        model=model,
        dtype=dtype,
        device=device,
        threads=threads,
        prefill=tuple(p_coef),
        decode=tuple(d_coef),
        step_tokens=step_tokens,
        source="profiled",
        fit_error=max(p_err, d_err),
        facts=dict(facts or {}),
    )


def _relative_nnls(features: np.ndarray, seconds: np.ndarray) -> tuple[list[float], float]:
    """Coefficients ≥ 0 minimising Σ((features·x − t)/t)²; also the largest relative residual."""
    weighted = features / seconds[:, None]
    target = np.ones_like(seconds)
    coef = _nnls(weighted, target)
    rel = np.abs(features @ coef - seconds) / seconds
    return [float(x) for x in coef], float(rel.max())


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    try:
        from scipy.optimize import nnls
    except ImportError:  # scipy is optional: refit without any coefficient that comes out negative
        active = list(range(a.shape[1]))
        while True:
            x = np.zeros(a.shape[1])
            x[active] = np.linalg.lstsq(a[:, active], y, rcond=None)[0]
            negative = [i for i in active if x[i] < 0]
            if not negative:
                return x
            active.remove(min(negative, key=lambda i: x[i]))
    return nnls(a, y)[0]
