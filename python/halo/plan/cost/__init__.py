"""The cost model: what each planned step will cost on this machine.

The LLM part: per-(model, dtype, weight format, device, threads) prefill and decode latency curves, model load time
and KV copy bandwidth, measured by ``halo profile`` (``halo.runtime.engine_profiler.profile_engine``) and cached as JSON
(``load_curves``); and the observed output lengths per llm node (``OutputLengthHistory``), with their decode rates
under speculative decoding (``DecodeRate``).
"""

from halo.plan.cost.latency_curves import DecodeSample, LatencyCurves, PrefillSample, fit_latency_curves
from halo.plan.cost.output_history import (
    FOREACH_GUESS,
    PLAIN_DECODE,
    DecodeRate,
    OutputLengthHistory,
    calls_key,
    decode_key,
    output_key,
)
from halo.plan.cost.profile_cache import (
    DEFAULT_CURVES,
    ProfileMissingWarning,
    WeightsProfileMissingWarning,
    load_curves,
    model_key,
    profile_path,
    save_curves,
)
from halo.plan.cost.tool_cost import ToolCostModel

__all__ = [
    "DEFAULT_CURVES",
    "FOREACH_GUESS",
    "PLAIN_DECODE",
    "DecodeRate",
    "DecodeSample",
    "LatencyCurves",
    "OutputLengthHistory",
    "PrefillSample",
    "ProfileMissingWarning",
    "ToolCostModel",
    "WeightsProfileMissingWarning",
    "calls_key",
    "decode_key",
    "fit_latency_curves",
    "load_curves",
    "model_key",
    "output_key",
    "profile_path",
    "save_curves",
]
