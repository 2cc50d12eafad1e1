"""Workflow specs: the YAML format and Python builder, validation with locations, the static DAG.

from halo.spec import Workflow
wf = Workflow.from_yaml("triage.yaml")   # or Workflow("triage").inputs(...).llm(...)
wf.spec      # the validated WorkflowSpec (pydantic)
wf.graph     # the WorkflowGraph: tool calls decoupled, loops unrolled, references resolved
"""

from halo.spec.batch_check import check_batch
from halo.spec.document import DatabaseSpec, LoopSpec, ModelSpec, WorkflowSpec
from halo.spec.errors import BatchError, SpecError, SpecIssue, TemplateRenderError
from halo.spec.graph import Binding, GraphNode, Guard, OutputBinding, WorkflowGraph
from halo.spec.nodes import (
    DEFAULT_MODEL,
    OUTPUT_FIELDS,
    HttpNode,
    LlmNode,
    PythonNode,
    RuleNode,
    SqlNode,
)
from halo.spec.workflow import Workflow

__all__ = [
    "DEFAULT_MODEL",
    "OUTPUT_FIELDS",
    "BatchError",
    "Binding",
    "DatabaseSpec",
    "GraphNode",
    "Guard",
    "HttpNode",
    "LlmNode",
    "LoopSpec",
    "ModelSpec",
    "OutputBinding",
    "PythonNode",
    "RuleNode",
    "SpecError",
    "SpecIssue",
    "SqlNode",
    "TemplateRenderError",
    "Workflow",
    "WorkflowGraph",
    "WorkflowSpec",
    "check_batch",
]
