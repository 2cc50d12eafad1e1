"""Two workers as Ray actors (separate processes): the plan places independent llm nodes on both, the
run's stats show that placement, and the outputs equal a one-worker run's."""

from __future__ import annotations

import os

import halo
import pytest
from halo.spec import Workflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp))
    yield ray
    ray.shutdown()


def _workflow() -> Workflow:
    # Two independent llm nodes of equal cost, then one that reads both: the best plan runs the
    # first two side by side on the two workers.
    return (
        Workflow("two-sides")
        .inputs("topic")
        .llm("pros", prompt="List one advantage of {{ topic }}.", max_tokens=6)
        .llm("cons", prompt="List one drawback of {{ topic }}.", max_tokens=6)
        .llm("verdict", prompt="Pro: {{ pros.output }} Con: {{ cons.output }} Verdict on {{ topic }}:", max_tokens=4)
        .outputs(pros="pros.output", cons="cons.output", verdict="verdict.output")
    )


def test_two_workers_use_both_and_match_one_worker(ray_cluster):
    rows = [{"topic": t} for t in ("bicycles", "trains", "ferries", "bicycles")]
    wf = _workflow()
    with halo.compile(wf, workers=2, dtype="fp32") as app:
        plan_text = app.explain(rows)
        res = app.run(rows)
    assert res.errors == []
    placed = res.stats.workers_by_node
    assert {w for ws in placed.values() for w in ws} == {0, 1}, (placed, plan_text)
    assert placed["pros"] != placed["cons"]
    assert sum(res.stats.calls_by_worker.values()) == res.stats.llm_calls_executed == 9
    with halo.compile(wf, dtype="fp32") as one:
        single = one.run(rows)
    assert res.outputs == single.outputs


def test_a_planned_kv_move_pulls_the_prefix_to_the_child_worker(ray_cluster):
    from halo.plan import consolidate
    from halo.plan.emit import emit
    from halo.plan.search import LLMTask, PlanProblem, Worker, evaluate
    from halo.runtime.processor import Processor
    from halo.runtime.tools import ToolRunner

    system = "You are a careful travel writer who answers in plain words. " * 6  # ~8 shared KV blocks
    wf = (
        Workflow("kv-move")
        .inputs("city")
        .llm("intro", system=system, prompt="City: {{ city }}", max_tokens=5)
        .llm("more", system=system, prompt="City: {{ city }}\nIntro: {{ intro.output }}\nOne more fact:", max_tokens=5)
        .outputs(intro="intro.output", more="more.output")
    )
    rows = [{"city": c} for c in ("Oslo", "Lima", "Oslo")]
    model = "smollm2-135m"
    # The plan under test: the parent on w0, the child on w1 with its shared prefix moved over.
    problem = PlanProblem(
        tasks=(
            LLMTask("intro", model, 1.0, 1.0),
            LLMTask("more", model, 1.0, 1.0, depends_on=("intro",), kv_parent="intro", kv_saving_s=0.5, kv_move_s=0.01),
        ),
        workers=(Worker("w0"), Worker("w1")),
        model_load_s={model: 4.0},
    )
    plan = evaluate(problem, [[("intro", "w0")], [("more", "w1")]], "forced")
    assert [p.kv for e in plan.epochs for p in e.placements] == ["-", "move"]
    with halo.compile(wf, workers=2, dtype="fp32") as app:
        graph = consolidate(wf, rows, app._tokenizers)
        execution = emit(graph, plan, 2, {"more": "intro"})
        before = [w.stats() for w in app._workers]
        with ToolRunner(wf) as tools:
            outcome = Processor(graph, rows, execution, app._workers, tools).run()
        after = [w.stats() for w in app._workers]
        moved = app._workers[1].imported_tokens()
        reference = app.run(rows)
    assert outcome.kv_moves == 2  # two distinct cities
    assert moved >= 4 * 16  # whole blocks of the shared system prompt (blocks w1 already had are not copied)
    assert after[1].cached_tokens - before[1].cached_tokens >= moved  # the child reused them on w1
    assert [outcome.outputs[r] for r in range(len(rows))] == reference.outputs
