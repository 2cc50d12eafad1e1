"""Where measured latency curves live: one JSON file per (model, dtype, device, threads).

``$HALO_CACHE_DIR/profiles/<model>-<dtype>-<device>-t<threads>.json`` (default ``~/.cache/halo``).
``halo profile`` writes them; ``load_curves`` reads them, falling back to a built-in curve (with a
warning) until this machine has been profiled.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import replace
from pathlib import Path

from halo.plan.cost.latency_curves import LatencyCurves

# SmolLM2-135M, bf16 on 2 AVX-512+AMX threads (profiled with `halo profile`, rounded). Only a
# placeholder: other models and machines differ by integer factors, hence the warning.
DEFAULT_CURVES = LatencyCurves(
    model="default",
    dtype="bf16",
    device="cpu",
    threads=2,
    prefill=(0.03, 2.0e-4, 1.5e-7),
    decode=(0.028, 7e-4, 2e-6),
    step_tokens=1024,
    source="default",
)


class ProfileMissingWarning(UserWarning):
    """No measured latency curves for this model and machine: the cost model uses a built-in default."""


def profiles_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "profiles"
    env = os.environ.get("HALO_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "halo") / "profiles"


def model_key(model: str | os.PathLike | None) -> str:
    """A file-name-safe key for a model: its registered name, or the stem of its file or directory."""
    if model is None:
        return "smollm2-135m"
    name = os.fspath(model)
    if os.sep in name or name.endswith(".gguf"):
        name = Path(name).stem if name.endswith(".gguf") else Path(name).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def profile_path(
    model: str | os.PathLike | None, dtype: str, device: str, threads: int, cache_dir: str | os.PathLike | None = None
) -> Path:
    return profiles_dir(cache_dir) / f"{model_key(model)}-{dtype}-{device}-t{threads}.json"


def save_curves(curves: LatencyCurves, cache_dir: str | os.PathLike | None = None) -> Path:
    return curves.save(profile_path(curves.model, curves.dtype, curves.device, curves.threads, cache_dir))


def load_curves(
    model: str | os.PathLike | None,
    dtype: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> LatencyCurves:
    """The profiled curves for this key, else ``DEFAULT_CURVES`` relabelled for it, with a warning.

    ``dtype="auto"`` takes whichever of the bf16 and fp32 profiles is faster, as the engine's own
    ``auto`` would pick the faster dtype. ``threads`` defaults to torch's thread count.
    """
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    dtypes = ("bf16", "fp32") if dtype == "auto" else (dtype,)
    found = [
        LatencyCurves.load(p) for d in dtypes if (p := profile_path(model, d, device, threads, cache_dir)).is_file()
    ]
    if found:
        return min(found, key=lambda c: c.generate_s(256, 0, 32, 8))
    wanted = profile_path(model, dtypes[0], device, threads, cache_dir)
    warnings.warn(
        f"no latency profile for model {model_key(model)} (dtype {dtype}, {device}, {threads} threads) at "
        f"{wanted.parent}; the cost model uses a built-in default curve. Run `halo profile --model "
        f"{model_key(model)} --dtype {dtype}` once on this machine (well under a minute) to measure it.",
        ProfileMissingWarning,
        stacklevel=2,
    )
    return replace(DEFAULT_CURVES, model=model_key(model), dtype=dtypes[0], device=device, threads=threads)
