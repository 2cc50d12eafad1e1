"""The names of the weight formats `LLMEngine(weights=...)` takes, importable without torch.

The command line offers them as `--weights` choices, and `halo --help` must not import torch to do
so; the formats themselves (the layers and their kernels) live in quantized_linear.py.
"""

from __future__ import annotations

from typing import Literal

WeightFormatName = Literal["fp32", "bf16", "int8", "int4"]
WEIGHT_FORMATS: tuple[str, ...] = ("auto", "bf16", "fp32", "int8", "int4")  # what LLMEngine(weights=) takes
QUANTIZED_FORMATS = ("int8", "int4")
WEIGHTS_HELP = (
    "how the weight matrices are stored: auto (the compute dtype's float unless memory asks for less), "
    "bf16, fp32, or weight-only int8/int4 on CPU (docs/models.md)"
)
