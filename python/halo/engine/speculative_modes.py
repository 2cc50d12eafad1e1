"""The names of the speculative modes `LLMEngine(speculative=...)` takes, importable without torch.

The command line offers them as `--speculative` choices, and `halo --help` must not import torch to do
so; the speculation itself (drafting, verifying, `auto`'s break-even) lives in speculation.py.
"""

from __future__ import annotations

SPECULATIVE_MODES: tuple[str, ...] = ("auto", "on", "off")
SPECULATIVE_DEFAULT = "off"  # until `auto` is measured faster over the bench workloads
SPECULATIVE_HELP = (
    "prompt-lookup speculative decoding of greedy free-text nodes (outputs unchanged): on, off, or auto "
    "(drafts where the measured acceptance pays); default: the engine's (off)"
)
