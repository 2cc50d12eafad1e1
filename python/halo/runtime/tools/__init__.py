"""The CPU tool pool: sql (DuckDB, PostgreSQL), http, python and rule calls, coalesced and cached per run.

One module per tool kind (`sql`, `http`, `python_call`, `rule`); `tool_runner.ToolRunner` puts them
behind one `submit(node, request) -> Future` for the Processor.
"""

from halo.runtime.tools.tool_runner import TOOL_KINDS, ToolRunner
from halo.runtime.tools.tool_stats import KindStats, ToolSpan, ToolStats

__all__ = ["TOOL_KINDS", "KindStats", "ToolRunner", "ToolSpan", "ToolStats"]
