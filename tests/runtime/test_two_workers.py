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
