"""Where measured latency curves live: one JSON file per (model, dtype, weights, device, threads).

``$HALO_CACHE_DIR/profiles/<model>-<dtype>-<device>-t<threads>.json`` (default ``~/.cache/halo``) for
weights kept in the compute dtype, ``<model>-<dtype>-<weights>-<device>-t<threads>.json`` for int8
and int4 weights (their kernels run at other speeds than the float ones). ``halo profile [--weights]``
writes them; ``load_curves`` reads them: a weight format never profiled plans with its dtype's float
curves (with a `WeightsProfileMissingWarning` that says so), and a model never profiled with a
built-in curve (with a `ProfileMissingWarning`) until this machine has been profiled.
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


FLOAT_WEIGHTS = ("bf16", "fp32")  # weights kept in the compute dtype: the dtype's own profile


class ProfileMissingWarning(UserWarning):
    """No measured latency curves for this model and machine: the cost model uses a built-in default."""


class WeightsProfileMissingWarning(UserWarning):
    """No curves measured with this weight format (int8/int4): the cost model uses the dtype's float ones."""


def quantized(weights: str | None) -> bool:
    """Whether ``weights`` names a format with profiles of its own (int8, int4; not auto or a float)."""
    return weights not in (None, "auto", *FLOAT_WEIGHTS)


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
    model: str | os.PathLike | None,
    dtype: str,
    device: str,
    threads: int,
    cache_dir: str | os.PathLike | None = None,
    weights: str | None = None,
) -> Path:
    """The file of one profile; ``weights`` None (or a float format) is the dtype's own."""
    fmt = f"-{weights}" if quantized(weights) else ""
    return profiles_dir(cache_dir) / f"{model_key(model)}-{dtype}{fmt}-{device}-t{threads}.json"


def save_curves(curves: LatencyCurves, cache_dir: str | os.PathLike | None = None) -> Path:
    path = profile_path(curves.model, curves.dtype, curves.device, curves.threads, cache_dir, curves.weights)
    return curves.save(path)


def load_curves(
    model: str | os.PathLike | None,
    dtype: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    weights: str | None = "auto",
) -> LatencyCurves:
    """The profiled curves for this key, else ``DEFAULT_CURVES`` relabelled for it, with a warning.

    ``dtype="auto"`` takes whichever of the bf16 and fp32 profiles is faster, as the engine's own
    ``auto`` would pick the faster dtype; a float ``weights`` is its dtype. ``weights`` int8/int4 take
    that format's profiles, or, where it has none, the dtype's float ones with a
    `WeightsProfileMissingWarning`; ``auto`` plans with the float ones (what the engine's ``auto``
    keeps below 1B parameters or where memory allows). ``threads`` defaults to torch's thread count.
    """
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    if weights in FLOAT_WEIGHTS and dtype == "auto":
        dtype = weights  # the engine keeps float weights in the compute dtype
    dtypes = ("bf16", "fp32") if dtype == "auto" else (dtype,)
    if quantized(weights):
        found = _profiles(model, dtypes, device, threads, cache_dir, weights)
        if found:
            return found
        warnings.warn(
            f"no {weights} latency profile for model {model_key(model)} (dtype {dtype}, {device}, {threads} threads): "
            f"planning with its {'/'.join(dtypes)} curves. Run `halo profile --model {model_key(model)} --dtype "
            f"{dtype} --weights {weights}` once on this machine to measure {weights}'s own.",
            WeightsProfileMissingWarning,
            stacklevel=2,
        )
    found = _profiles(model, dtypes, device, threads, cache_dir, None)
    if found:
        return found
    wanted = profile_path(model, dtypes[0], device, threads, cache_dir)
    warnings.warn(
        f"no latency profile for model {model_key(model)} (dtype {dtype}, {device}, {threads} threads) at "
        f"{wanted.parent}; the cost model uses a built-in default curve. Run `halo profile --model "
        f"{model_key(model)} --dtype {dtype}` once on this machine (well under a minute) to measure it.",
        ProfileMissingWarning,
        stacklevel=2,
    )
    return replace(DEFAULT_CURVES, model=model_key(model), dtype=dtypes[0], device=device, threads=threads)


def _profiles(
    model: str | os.PathLike | None,
    dtypes: tuple[str, ...],
    device: str,
    threads: int,
    cache_dir: str | os.PathLike | None,
    weights: str | None,
) -> LatencyCurves | None:
    """The fastest stored profile of ``model`` over ``dtypes`` with these weights (None when there is none)."""
    paths = [profile_path(model, d, device, threads, cache_dir, weights) for d in dtypes]
    found = [LatencyCurves.load(p) for p in paths if p.is_file()]
    return min(found, key=lambda c: c.generate_s(256, 0, 32, 8)) if found else None
