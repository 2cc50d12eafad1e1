"""Planning: from a workflow and a batch to what will run (consolidation, cost model, plan search).

from halo.plan import PlanContext, consolidate, plan
graph = consolidate(workflow, rows, tokenizer)   # ConsolidatedGraph
planned = plan(graph, PlanContext(curves_for))   # PlannedBatch: problem, ExecutionPlan, KV parents
print(planned.explain())
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
from halo.plan.node_figures import NodeActual, NodeEstimate, RunActuals
from halo.plan.planner import DP_TIME_LIMIT_S, PlanContext, PlannedBatch, PlannerMode, plan
from halo.plan.prefix_index import PrefixGroup, PrefixIndex

__all__ = [
    "DP_TIME_LIMIT_S",
    "ChatTokenizer",
    "ConsolidatedGraph",
    "Consolidator",
    "ModelPrefixes",
    "NodeActual",
    "NodeCounters",
    "NodeEstimate",
    "PhysicalNode",
    "PlanContext",
    "PlannedBatch",
    "PlannerMode",
    "PrefixGroup",
    "PrefixIndex",
    "RunActuals",
    "WhitespaceTokenizer",
    "consolidate",
    "explain_dot",
    "explain_text",
    "plan",
]
