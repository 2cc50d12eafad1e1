"""Two workers as Ray actors (separate processes) on a local Ray: the plan places independent llm nodes
on both, the run's stats show that placement, and the outputs equal a one-worker run's; a planned KV
move pulls a prefix between the actors; a Ray worker streams jobs into its running batch and cancels
there; a worker killed mid-run loses nothing (its jobs rerun on the live worker under `on_error:
retry`, every row completes once, outputs equal the serial run) and, without retry, its rows fail
naming it. The streaming and failure tests use a tiny random model (tests/tiny_default_model.py):
what they check is the transport, and its actors load in milliseconds. test_ray_cluster.py runs
workers on a real two-node cluster."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, wait
from pathlib import Path

import halo
import pytest
from halo.engine import SamplingParams
from halo.errors import InvalidRequestError
from halo.plan.emit import emit
from halo.runtime.compiled import CompiledWorkflow
from halo.runtime.llm_worker import EngineRecipe, LLMDone, LLMJob
from halo.runtime.processor import Processor
from halo.runtime.ray_worker import Placement, RayWorker
from halo.runtime.run_loop import RunLoop
from halo.runtime.tools import ToolRunner
from halo.spec import Workflow
from tiny_default_model import SOURCE, build_tiny_default

pytestmark = pytest.mark.slow

TINY_ENGINE = {"kv_blocks": 512, "swap_space_gb": 0}
TOPICS = ("bicycles", "trains", "ferries", "trams", "canoes", "gliders")


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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_default(tmp_path_factory.mktemp("tiny") / "tiny")


def _tiny_app(wf: Workflow, tiny_model: Path, **options) -> CompiledWorkflow:
    return halo.compile(
        wf, models={SOURCE: str(tiny_model)}, dtype="fp32", engine_options=TINY_ENGINE, cache=False, **options
    )


def _sides(on_error: str) -> Workflow:
    fields = {"on_error": on_error, "retries": 1} if on_error == "retry" else {"on_error": on_error}
    return (
        Workflow(f"two-sides-{on_error}")
        .inputs("topic")
        .llm("pros", prompt="List one advantage of {{ topic }}.", max_tokens=12, **fields)
        .llm("cons", prompt="List one drawback of {{ topic }}.", max_tokens=12, **fields)
        .llm("verdict", prompt="Pro: {{ pros.output }} Con: {{ cons.output }} Verdict:", max_tokens=6, **fields)
        .outputs(pros="pros.output", cons="cons.output", verdict="verdict.output")
    )


def _until(worker: RayWorker, phys: int) -> list[LLMDone]:
    """Poll `worker` (sleeping on its wakeups, as the run loop does) until job `phys` is back."""
    seen: list[LLMDone] = []
    while all(d.phys != phys for d in seen):
        assert worker.wakeups(), "nothing in flight to wait for"
        wait(worker.wakeups(), timeout=60.0, return_when=FIRST_COMPLETED)
        seen.extend(worker.poll())
    return seen


def test_a_ray_worker_streams_jobs_into_its_running_batch_and_cancels_there(ray_cluster, tiny_model):
    recipe = EngineRecipe({"dtype": "fp32", **TINY_ENGINE}, models={SOURCE: str(tiny_model)})
    worker = RayWorker(0, recipe, Placement(1))
    try:
        worker.preload(SOURCE)
        long = SamplingParams(max_tokens=200, ignore_eos=True)
        short = SamplingParams(max_tokens=2)

        def ask(text: str) -> list[dict[str, str]]:
            return [{"role": "user", "content": text}]

        worker.submit([LLMJob(1, SOURCE, ask("Tell a story."), long, 1), LLMJob(2, SOURCE, ask("Hi."), short, 1)])
        assert [d.phys for d in _until(worker, 2)] == [2]  # the long job decodes on
        worker.submit([LLMJob(3, SOURCE, ask("Count."), short, owner=1)])  # sent mid-batch
        assert [d.phys for d in _until(worker, 3)] == [3]  # it joined the batch instead of waiting for job 1
        assert worker.inflight == 1
        assert worker.cancel(1) == 1 and worker.inflight == 0
        wait(worker.wakeups(), timeout=60.0, return_when=ALL_COMPLETED)  # the cancel call has reached the actor
        assert ray_cluster.get(worker._actor.inflight.remote()) == 0  # and aborted job 1 there
        assert worker.poll() == []  # whatever job 1 left behind never comes back
        worker.submit([LLMJob(4, SOURCE, ask("Bye."), short, owner=2)])
        [done] = _until(worker, 4)
        assert (done.owner, done.worker, done.error) == (2, 0, None) and done.start <= done.end
    finally:
        worker.shutdown()


def test_a_worker_killed_mid_run_loses_no_row_and_duplicates_none(ray_cluster, tiny_model):
    rows = [{"topic": t} for t in TOPICS]
    wf = _sides("retry")
    with _tiny_app(wf, tiny_model, plan="serial") as one:
        serial = one.run(rows)
    assert serial.errors == []
    with _tiny_app(wf, tiny_model, workers=2) as app:
        planned = app.plan(rows)
        execution = emit(planned.graph, planned.plan, 2, dict(planned.kv_parents))
        assert 1 in execution.worker_of.values(), planned.explain()  # worker 1 has work to lose
        victim = app._workers[1]
        reported: Counter[int] = Counter()
        killed_with = 0
        with ToolRunner(wf) as tools:
            processor = Processor(
                planned.graph,
                rows,
                execution,
                app._workers,
                tools,
                tokenizers=app._tokenizers,
                on_row=lambda row, outputs, error: reported.update([row]),
            )
            loop: RunLoop[Processor] = RunLoop(isolate=False)
            loop.add(processor)
            while loop.active:
                loop.step()
                if victim.alive and not killed_with and victim.inflight:
                    killed_with = victim.inflight  # jobs sent there and not collected yet
                    ray_cluster.kill(victim._actor)
        outcome = processor.out
        again = app.run(rows)  # the app goes on with the live worker
    assert killed_with > 0 and not victim.alive
    assert victim.death is not None and victim.death.startswith("Ray worker 1 failed")
    lost = [span for span in outcome.timeline if span.worker == 1 and not span.ok]
    assert len(lost) >= killed_with  # each job it held came back failed, then ran again elsewhere
    assert outcome.errors == {}
    assert reported == Counter(range(len(rows)))  # every row finished exactly once
    assert [outcome.outputs[r] for r in range(len(rows))] == serial.outputs
    assert again.errors == [] and again.outputs == serial.outputs
    assert set(again.stats.calls_by_worker) == {0}


def test_without_retry_a_dead_workers_rows_fail_naming_it(ray_cluster, tiny_model):
    rows = [{"topic": t} for t in TOPICS[:3]]
    wf = _sides("fail_row")
    with _tiny_app(wf, tiny_model, plan="serial") as one:
        serial = one.run(rows)
    with _tiny_app(wf, tiny_model, workers=2) as app:
        ray_cluster.kill(app._workers[1]._actor)  # dead before the run: the run finds out from its calls
        result = app.run(rows)
    assert result.errors, result.stats.workers_by_node
    for error in result.errors:
        assert error.message.startswith("Ray worker 1 failed (ActorDiedError: The actor died"), error.message
        assert error.message.endswith("the request was lost there")
    failed = {e.row for e in result.errors}
    for row, (outputs, expected) in enumerate(zip(result.outputs, serial.outputs, strict=True)):
        if row not in failed:
            assert outputs == expected


def test_placement_options_are_checked_against_the_cluster(ray_cluster, tiny_model):
    wf = _sides("fail_row")
    with pytest.raises(InvalidRequestError, match="no node of the local Ray offers resource 'gpu_box'"):
        _tiny_app(wf, tiny_model, workers=2, worker_resources=["gpu_box", "gpu_box"])
    with pytest.raises(InvalidRequestError, match="2 workers of 3 CPUs need 6 CPUs; the local Ray has 2"):
        _tiny_app(wf, tiny_model, workers=2, worker_cpus=3)
