"""The cost model: what each planned step will cost on this machine.

So far the LLM part: per-(model, dtype, device, threads) prefill and decode latency curves, measured
by ``halo profile`` (``profile_engine``) and cached as JSON (``load_curves``).
"""

from halo.plan.cost.latency_curves import DecodeSample, LatencyCurves, PrefillSample, fit_latency_curves
from halo.plan.cost.profile_cache import (
    DEFAULT_CURVES,
    ProfileMissingWarning,
    load_curves,
    model_key,
    profile_path,
    save_curves,
)
from halo.plan.cost.profiler import EngineTimer, ProfileGrid, profile_engine
from halo.plan.cost.tool_cost import ToolCostModel

__all__ = [
    "DEFAULT_CURVES",
    "DecodeSample",
    "EngineTimer",
    "LatencyCurves",
    "PrefillSample",
    "ProfileGrid",
    "ProfileMissingWarning",
    "ToolCostModel",
    "fit_latency_curves",
    "load_curves",
    "model_key",
    "profile_engine",
    "profile_path",
    "save_curves",
]
