"""A node split data-parallel over two workers (Ray actors): each instance runs on its share's
worker, a reply on the worker its classify ran on (or, where its classify ran on the other worker,
with that prefix's KV pulled over), and the outputs equal the serial run's (fp32 greedy)."""

from __future__ import annotations

import halo
import pytest
from halo.spec import Workflow

pytestmark = pytest.mark.slow


def test_a_split_chain_runs_on_both_workers_and_matches_the_serial_run(ray_cluster):
    from halo.plan import consolidate
    from halo.plan.emit import emit
    from halo.plan.search import LLMTask, PlanProblem, Split, Worker, evaluate
    from halo.runtime.processor import Processor
    from halo.runtime.tools import ToolRunner

    wf = (
        Workflow("split-chain")
        .inputs("text")
        .llm("classify", prompt="Is this message happy or sad? {{ text }}", max_tokens=4)
        .llm(
            "reply", prompt="Is this message happy or sad? {{ text }} It is {{ classify.output }}. Reply:", max_tokens=6
        )
        .outputs(label="classify.output", reply="reply.output")
    )
    rows = [{"text": t} for t in ("I won!", "I lost my keys.", "Sunny day.", "It rained again.", "I won!")]
    model = "smollm2-135m"
    halves = (Split(2, 0.5, 0.5, 0.2, 0.1),)
    problem = PlanProblem(
        tasks=(
            LLMTask("classify", model, 1.0, 1.0, instances=4, splits=halves),
            LLMTask("reply", model, 1.0, 1.0, ("classify",), "classify", 0.4, 0.2, instances=4, splits=halves),
        ),
        workers=(Worker("w0"), Worker("w1")),
        model_load_s={model: 4.0},
    )
    plan = evaluate(problem, [[("classify", "w0"), ("classify", "w1")], [("reply", "w0"), ("reply", "w1")]], "forced")
    assert plan.shares() == {"classify": {"w0": 2, "w1": 2}, "reply": {"w0": 2, "w1": 2}}
    with halo.compile(wf, workers=2, dtype="fp32") as app:
        graph = consolidate(wf, rows, app._tokenizers)
        execution = emit(graph, plan, 2, {"reply": "classify"})
        with ToolRunner(wf) as tools:
            outcome = Processor(graph, rows, execution, app._workers, tools).run()
        # classify whole on w0, reply split: the share on w1 pulls each row's prefix from w0 (the plan moves)
        pulled = evaluate(problem, [[("classify", "w0")], [("reply", "w0"), ("reply", "w1")]], "forced")
        assert [p.kv for p in pulled.epochs[1].placements] == ["local", "move"]
        moving = emit(graph, pulled, 2, {"reply": "classify"})
        with ToolRunner(wf) as tools:
            moved = Processor(graph, rows, moving, app._workers, tools).run()
    assert not outcome.errors and not moved.errors
    assert outcome.kv_moves == 0
    assert moved.kv_moves == 2 == len(moving.kv_source_of)  # the two replies on w1
    assert {span.worker for span in moved.timeline if span.node == "reply"} == {0, 1}
    ran = {span.phys: span.worker for span in outcome.timeline if span.kind == "llm"}
    table = graph.physical
    classify = [p for p in range(len(table)) if table.node[p] == "classify"]
    reply = [p for p in range(len(table)) if table.node[p] == "reply"]
    assert len(classify) == len(reply) == 4  # the repeated row is merged
    assert sorted(ran[p] for p in classify) == [0, 0, 1, 1]
    for p in reply:  # each reply ran where its classify instance's KV is
        parent = next(u for u in table.key[p][2] if table.node[u] == "classify")
        assert ran[p] == ran[parent]
    with halo.compile(wf, dtype="fp32") as one:
        serial = one.run(rows)
    assert serial.errors == []
    assert [outcome.outputs[r] for r in range(len(rows))] == serial.outputs
    assert [moved.outputs[r] for r in range(len(rows))] == serial.outputs
