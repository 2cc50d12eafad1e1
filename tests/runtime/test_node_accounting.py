"""Per-node accounting (`RunStats.nodes`): exact logical, executed, merged, coalesced, skipped, failed
and cancelled counts per graph node on the tiny GGUF model (tests/tiny_gguf.py, fp32) and real
DuckDB, tokens that add up to the run's totals, the serial baseline filling the same counters, and
the per-node table `halo run` prints.

The duplicate-rows workflow is built so every count is known in advance (rows "ab", "ax", "ab", "bz"):
`a` renders from the row (3 distinct prompts: 1 instance merged at consolidation); `first` (a rule,
run inline by the tool runner) gives "a", "a", "b"; `c` and `s` read it, so consolidation keeps one
execution per distinct `first` execution (3, 1 merged) and at run time two of them render equal: `c`
runs it once (the rule results settle together, so the equal requests meet in flight) and `s` once
(the tool runner joins it in flight or answers it from its run cache, whichever comes first).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import halo
import pytest
from halo.runtime.processor import ProcessorOutcome
from halo.runtime.results import NodeStats
from halo.runtime.run_command import node_table
from halo.runtime.run_stats import TokenCounts, run_stats
from halo.spec import Workflow
from tiny_gguf import write_tiny_gguf

sys.path.insert(0, str(Path(__file__).parent))  # workflow_functions

DUPLICATES = """\
name: duplicates
models:
  t: {{source: {model}, dtype: fp32}}
inputs: [q]
nodes:
  - {{id: a, kind: llm, model: t, prompt: "Q: {{{{ q }}}}", max_tokens: 3}}
  - {{id: first, kind: rule, input: "{{{{ q }}}}", regex: "^(\\\\w)", group: 1, default: ""}}
  - {{id: c, kind: llm, model: t, prompt: "Letter {{{{ first.output }}}}", max_tokens: 2}}
  - id: s
    kind: sql
    query: "SELECT CAST(:v AS VARCHAR) AS v"
    params: {{v: "{{{{ first.output }}}}"}}
outputs: {{a: a.output, c: c.output, v: s.rows}}
"""
DUPLICATE_ROWS = [{"q": "ab"}, {"q": "ax"}, {"q": "ab"}, {"q": "bz"}]

LOOP = """\
name: refine
models:
  t: {{source: {model}, dtype: fp32}}
inputs: [q]
nodes:
  - {{id: draft, kind: llm, model: t, prompt: "Draft {{{{ q }}}} {{{{ iteration }}}}", max_tokens: 2}}
  - {{id: check, kind: rule, input: "{{{{ q }}}} {{{{ draft.output }}}}", regex: "^(x)", group: 1, default: ""}}
loops:
  - nodes: [draft, check]
    max_iterations: 3
    until: "check.output == 'x'"
outputs: {{d: draft.output}}
"""
LOOP_ROWS = [{"q": "x1"}, {"q": "y1"}, {"q": "x1"}]  # the x rows stop after iteration 1

FAILING = """\
name: failing
models:
  t: {{source: {model}, dtype: fp32}}
inputs: [text]
nodes:
  - {{id: flip, kind: python, function: "workflow_functions:explode", args: ["{{{{ text }}}}"], pure: true}}
  - {{id: say, kind: llm, model: t, prompt: "Say {{{{ flip.output }}}}", max_tokens: 2}}
  - {{id: tag, kind: rule, input: "{{{{ text }}}}", regex: "(\\\\w+)", group: 1, default: ""}}
outputs: {{say: say.output, tag: tag.output}}
"""
FAILING_ROWS = [{"text": "fine"}, {"text": "boom a"}, {"text": "ok"}, {"text": "boom a"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=3)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "cache"))  # no output history from other tests


def _workflow(tmp_path: Path, model: Path, text: str) -> Workflow:
    path = tmp_path / "wf.yaml"
    path.write_text(text.format(model=model))
    return Workflow.from_yaml(path)


def _counts(stats: NodeStats, *names: str) -> tuple[int, ...]:
    return tuple(getattr(stats, name) for name in names)


def test_duplicates_across_rows_count_logical_merged_executed_and_coalesced(tmp_path: Path, model: Path):
    with halo.compile(_workflow(tmp_path, model, DUPLICATES), max_inflight=64) as app:
        res = app.run(DUPLICATE_ROWS)
        serial = app.run(DUPLICATE_ROWS, plan="serial")
    assert res.errors == [] and serial.errors == [] and res.outputs == serial.outputs
    s, nodes = res.stats, res.stats.nodes
    assert list(nodes) == ["a", "first", "c", "s"]
    fields = ("logical", "merged", "executed", "coalesced", "joined", "skipped", "failed", "cancelled")
    assert _counts(nodes["a"], *fields) == (4, 1, 3, 0, 0, 0, 0, 0)
    assert _counts(nodes["first"], *fields) == (4, 1, 3, 0, 0, 0, 0, 0)
    assert _counts(nodes["c"], *fields) == (4, 1, 2, 1, 0, 0, 0, 0)
    assert _counts(nodes["s"], "logical", "merged", "executed") == (4, 1, 2)
    assert nodes["s"].coalesced + nodes["s"].tool_cache_hits == 1 and nodes["s"].hits == 1
    assert {n.persistent_hits for n in nodes.values()} == {0}
    # the totals are the nodes' sums
    assert (s.llm_calls_logical, s.llm_calls_executed, s.llm_calls_coalesced) == (8, 5, 1)
    assert (s.tool_calls_logical, s.tool_calls_executed) == (8, 5)
    assert s.tool_calls_coalesced + s.tool_cache_hits == 1
    # tokens: `a`'s prompts are the ids consolidation encoded; per node they add up to the engine's totals
    assert res.planned is not None
    assert nodes["a"].prompt_tokens == res.planned.graph.counters["a"].physical_prompt_tokens
    assert sum(n.prompt_tokens for n in nodes.values()) == s.prompt_tokens > 0
    assert sum(n.cached_tokens for n in nodes.values()) == s.cached_tokens
    assert sum(n.computed_tokens for n in nodes.values()) == s.prefill_tokens
    assert sum(n.decode_tokens for n in nodes.values()) == s.generated_tokens > 0
    assert s.decode_tokens <= s.generated_tokens  # the engines compute one position fewer per sequence
    assert nodes["a"].decode_tokens <= 3 * 3 and nodes["c"].decode_tokens <= 2 * 2
    assert nodes["first"].prompt_tokens == nodes["s"].decode_tokens == 0
    for n in nodes.values():  # every node ran: its spans give it a busy time inside its first..last span
        assert n.start_s is not None and n.end_s is not None and 0.0 <= n.start_s <= n.end_s
        assert n.busy_s > 0.0 or n.kind == "rule"
    # the serial baseline fills the same counters: every instance alone
    ser = serial.stats.nodes
    for node_id in ("a", "first", "c", "s"):
        assert _counts(ser[node_id], "logical", "executed", "merged", "coalesced") == (4, 4, 0, 0), node_id
    assert sum(n.prompt_tokens for n in ser.values()) == serial.stats.prompt_tokens
    assert sum(n.decode_tokens for n in ser.values()) == serial.stats.generated_tokens
    assert (serial.stats.llm_calls_executed, serial.stats.tool_calls_executed) == (8, 8)


def test_halo_run_prints_a_per_node_table_of_the_non_zero_columns(tmp_path: Path, model: Path):
    from rich.console import Console

    with halo.compile(_workflow(tmp_path, model, DUPLICATES), max_inflight=64) as app:
        stats = app.run(DUPLICATE_ROWS).stats
    console = Console(file=io.StringIO(), width=250)
    console.print(node_table(stats))
    header = next(line for line in console.file.getvalue().splitlines() if "logical" in line)
    for column in ("node", "kind", "logical", "executed", "merged", "coalesced", "prompt", "decode", "busy s"):
        assert column in header
    for absent in ("skipped", "failed", "cancelled", "persistent", "joined"):
        assert absent not in header  # nothing counted there in this run


def test_a_loop_whose_until_holds_counts_the_skipped_iterations_per_instance(tmp_path: Path, model: Path):
    with halo.compile(_workflow(tmp_path, model, LOOP), max_inflight=64) as app:
        res = app.run(LOOP_ROWS)
        serial = app.run(LOOP_ROWS, plan="serial")
    assert res.errors == [] and res.outputs == serial.outputs
    nodes = res.stats.nodes
    # rows 0 and 2 are equal: one execution serves both, and one skip settles both instances
    assert _counts(nodes["draft#1"], "logical", "merged", "executed", "skipped") == (3, 1, 2, 0)
    assert _counts(nodes["draft#2"], "logical", "executed", "skipped") == (3, 1, 2)
    assert _counts(nodes["draft#3"], "logical", "executed", "skipped") == (3, 1, 2)
    assert _counts(nodes["check#2"], "executed", "skipped") == (1, 2)
    assert res.stats.nodes_skipped == 8
    draft = res.stats.by_name()["draft"]
    assert _counts(draft, "logical", "executed", "skipped") == (9, 4, 4)
    assert draft.prompt_tokens == sum(nodes[f"draft#{i}"].prompt_tokens for i in (1, 2, 3))
    # the serial baseline skips the same instances
    assert {k: n.skipped for k, n in serial.stats.nodes.items()} == {k: n.skipped for k, n in nodes.items()}
    assert serial.stats.nodes_skipped == 8


def test_a_failing_tool_under_fail_row_counts_failed_and_cancelled_instances(tmp_path: Path, model: Path):
    with halo.compile(_workflow(tmp_path, model, FAILING), max_inflight=64) as app:
        res = app.run(FAILING_ROWS)
        serial = app.run(FAILING_ROWS, plan="serial")
    assert [e.row for e in res.errors] == [1, 3] and {e.node for e in res.errors} == {"flip"}
    nodes = res.stats.nodes
    # "boom a" twice: one failing execution, two failed instances; `say` never runs for them
    assert _counts(nodes["flip"], "logical", "merged", "executed", "failed") == (4, 1, 3, 2)
    assert _counts(nodes["say"], "logical", "executed", "failed", "cancelled") == (4, 2, 0, 2)
    assert _counts(nodes["tag"], "executed", "failed", "cancelled") == (3, 0, 0)  # not downstream of flip
    assert res.stats.rows_failed == 2
    assert _counts(serial.stats.nodes["flip"], "executed", "failed") == (4, 2)


def test_persistent_cache_hits_reach_the_node_counters(tmp_path: Path):
    """The persistent result cache reports `ProcessorOutcome.persistent_hits` per graph node."""
    path = tmp_path / "wf.yaml"
    path.write_text(
        "name: tools\ninputs: [t]\nnodes:\n  - {id: tag, kind: rule, input: '{{ t }}', regex: '(\\w+)', default: x}\n"
        "outputs: {tag: tag.output}\n"
    )
    rows = [{"t": "red fox"}, {"t": "blue jay"}]
    with halo.compile(path) as app:
        planned = app.plan(rows)
    outcome = ProcessorOutcome({}, {}, [], nodes={"tag": NodeStats("tag", "rule")}, persistent_hits={"tag": 2})
    stats = run_stats(
        planned.graph.workflow,
        rows=2,
        ran=2,
        plan_s=0.0,
        planner="dp",
        outcome=outcome,
        tokens=TokenCounts(),
        planned=planned,
    )
    assert _counts(stats.nodes["tag"], "logical", "executed", "persistent_hits", "hits") == (2, 0, 2, 2)
