"""Predicted seconds of one call to a remote (OpenAI-compatible) model, learned from the calls runs make.

A remote endpoint is priced by a latency curve of the call's size, fitted per endpoint (`endpoint_key`:
api + base URL + model name) from observed calls:

    seconds = base_s + prompt_s_per_1k * prompt_tokens / 1000 + output_s_per_1k * output_tokens / 1000

a least-squares fit over exponentially decayed sums of observed (prompt tokens, output tokens, seconds),
so it follows drift (a busier server). The sums start with a few calls of `DEFAULT_CURVE` at typical
sizes, which fade like any old call: a few calls of one size still give a sane slope. Before any call
is observed the estimate is `DEFAULT_CURVE` itself (a hosted mid-size model: ~0.3 s to the first
token, ~50 generated tokens/s per request). What is
observed is the latency each call saw at the concurrency it ran at, so contention on the server is in
the curve. Stored as JSON in the halo cache dir (`remote_latency.json`), like the tool latencies.

Thread-safe: the run loop observes while a planner on another thread estimates.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# (base_s, seconds per 1000 prompt tokens, seconds per 1000 generated tokens) before any observation
DEFAULT_CURVE = (0.3, 0.2, 20.0)
DECAY = 0.98  # weight of older observations per new one (the fit follows the last ~50 calls)
PRIOR_WEIGHT = 0.25  # weight of each seeding observation of the default curve (PRIOR_POINTS)
MIN_CALL_S = 1e-4


def endpoint_key(api: str, base_url: str, model: str) -> str:
    """The identity a remote model is priced (and its results cached) by."""
    return f"{api} {base_url.rstrip('/')} {model}"


def latency_path(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "remote_latency.json"
    env = os.environ.get("HALO_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "halo") / "remote_latency.json"


def _features(prompt_tokens: float, output_tokens: float) -> np.ndarray:
    return np.array([1.0, max(prompt_tokens, 0.0) / 1000.0, max(output_tokens, 0.0) / 1000.0])


# Call sizes (prompt tokens, output tokens) the default curve is first observed at, `PRIOR_WEIGHT` each:
# the fit starts as the default curve and the default fades by DECAY with every real call.
PRIOR_POINTS = ((100, 10), (2000, 10), (100, 500), (2000, 500))


@dataclass
class _Fit:
    """Decayed normal equations of one endpoint's calls, seeded with the default curve (`PRIOR_POINTS`)."""

    xtx: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    xty: np.ndarray = field(default_factory=lambda: np.zeros(3))
    calls: int = 0

    @classmethod
    def seeded(cls) -> _Fit:
        fit = cls()
        prior = np.asarray(DEFAULT_CURVE)
        for prompt, output in PRIOR_POINTS:
            x = _features(prompt, output)
            fit.xtx += PRIOR_WEIGHT * np.outer(x, x)
            fit.xty += PRIOR_WEIGHT * x * float(prior @ x)
        return fit

    def observe(self, x: np.ndarray, seconds: float) -> None:
        self.xtx = DECAY * self.xtx + np.outer(x, x)
        self.xty = DECAY * self.xty + x * seconds
        self.calls += 1

    def coefficients(self) -> np.ndarray:
        theta = np.linalg.lstsq(self.xtx, self.xty, rcond=None)[0]
        return np.maximum(theta, 0.0)  # a call never gets cheaper as it grows


@dataclass
class RemoteLatencyModel:
    """Per endpoint, the fitted latency curve of one call (module docstring)."""

    path: Path | None = None  # where `save` writes; None: in memory only
    fits: dict[str, _Fit] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, endpoint: str, prompt_tokens: int, output_tokens: int, seconds: float) -> None:
        with self._lock:
            self.fits.setdefault(endpoint, _Fit.seeded()).observe(
                _features(prompt_tokens, output_tokens), float(seconds)
            )

    def observed_calls(self, endpoint: str) -> int:
        with self._lock:
            fit = self.fits.get(endpoint)
            return fit.calls if fit is not None else 0

    def call_s(self, endpoint: str, prompt_tokens: float, output_tokens: float) -> float:
        """Predicted seconds of one call of this size (the default curve before any call is observed)."""
        with self._lock:
            fit = self.fits.get(endpoint)
            theta = fit.coefficients() if fit is not None else np.asarray(DEFAULT_CURVE)
        return max(MIN_CALL_S, float(theta @ _features(prompt_tokens, output_tokens)))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> RemoteLatencyModel:
        """The model at `path` (default: under the halo cache dir); empty if there is none yet."""
        target = Path(path) if path is not None else latency_path()
        fits: dict[str, _Fit] = {}
        if target.is_file():
            for key, raw in json.loads(target.read_text()).items():
                xtx, xty = np.asarray(raw["xtx"], dtype=float), np.asarray(raw["xty"], dtype=float)
                if xtx.shape != (3, 3) or xty.shape != (3,):
                    raise ValueError(f"{target}: bad fit for {key!r}")
                fits[key] = _Fit(xtx, xty, int(raw["calls"]))
        return cls(target, fits)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        target = Path(path) if path is not None else self.path or latency_path()
        with self._lock:
            raw = {
                k: {"xtx": f.xtx.tolist(), "xty": f.xty.tolist(), "calls": f.calls}
                for k, f in sorted(self.fits.items())
            }
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(raw))
        tmp.replace(target)  # readers never see a half-written file
        return target
