"""Planning: from a workflow and a batch to what will run (consolidation, and later cost and search).

from halo.plan import consolidate, explain_text
graph = consolidate(workflow, rows, tokenizer)   # ConsolidatedGraph
print(explain_text(graph))
"""

from halo.plan.chat_tokenizer import ChatTokenizer, WhitespaceTokenizer
from halo.plan.consolidate import Consolidator, consolidate
from halo.plan.consolidated_graph import (
    ConsolidatedGraph,
    ModelPrefixes,
    NodeCounters,
    PhysicalNode,
)
from halo.plan.explain import explain_dot, explain_text
from halo.plan.prefix_index import PrefixGroup, PrefixIndex

__all__ = [
    "ChatTokenizer",
    "ConsolidatedGraph",
    "Consolidator",
    "ModelPrefixes",
    "NodeCounters",
    "PhysicalNode",
    "PrefixGroup",
    "PrefixIndex",
    "WhitespaceTokenizer",
    "consolidate",
    "explain_dot",
    "explain_text",
]
