"""Two workers on a real two-node Ray cluster on loopback (`ray start --head` + `ray start --address`).

The nodes offer one CPU and a label each (`node_a`, `node_b`); `halo.compile(..., ray_address=...,
worker_resources=["node_a", "node_b"])` joins the cluster and puts worker i on the node with label i
(each actor reports its node id). A plan that runs a child on the other worker than its parent moves
the shared prefix's KV between the actors (nodes) through Ray's object store; the outputs equal one
in-process worker's (fp32 greedy). The cluster is this test's own: its nodes run in their own process
groups and are stopped by the test (`tests/ray_nodes.py`), never by `ray stop`, which would stop
every Ray process on the machine. A tiny random model keeps the actors' loads instant; what is
checked is placement and transport.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import halo
import pytest
from halo.plan import consolidate
from halo.plan.emit import emit
from halo.plan.search import LLMTask, PlanProblem, Worker, evaluate
from halo.runtime.processor import Processor
from halo.runtime.tools import ToolRunner
from halo.spec import Workflow
from ray_nodes import RayNodes
from tiny_default_model import SOURCE, build_tiny_default

pytestmark = pytest.mark.slow

ENGINE = {"kv_blocks": 512, "swap_space_gb": 0}
SHORT_PATH = 40  # Ray's unix socket paths (its temp dir + ~70 characters) must stay under ~107


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNodes]:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # a local Ray of another module: this process joins the cluster instead
        ray.shutdown()
    temp = tmp_path_factory.mktemp("ray")
    if len(str(temp)) > SHORT_PATH:
        temp = Path(tempfile.mkdtemp(prefix="halo-ray-"))
    nodes = RayNodes(temp)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_TMPDIR")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(temp))
    try:
        nodes.start(cpus=1, resources={"node_a": 1})
        nodes.start(cpus=1, resources={"node_b": 1})
        yield nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        groups = [p.pid for p in nodes.processes]
        nodes.stop()
        assert nodes.leftovers(groups) == []  # every process of the cluster is gone
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_default(tmp_path_factory.mktemp("tiny") / "tiny")


def _workflow() -> Workflow:
    system = "You are a careful travel writer who answers in plain words. " * 6  # several shared KV blocks
    return (
        Workflow("kv-move-across-nodes")
        .inputs("city")
        .llm("intro", system=system, prompt="City: {{ city }}", max_tokens=6)
        .llm("more", system=system, prompt="City: {{ city }}\nIntro: {{ intro.output }}\nOne more fact:", max_tokens=6)
        .outputs(intro="intro.output", more="more.output")
    )


def test_workers_on_two_nodes_move_a_prefix_and_match_one_worker(cluster: RayNodes, tiny_model: Path):
    import ray

    wf = _workflow()
    rows = [{"city": c} for c in ("Oslo", "Lima", "Oslo")]
    options = {"models": {SOURCE: str(tiny_model)}, "dtype": "fp32", "engine_options": ENGINE, "cache": False}
    # The plan under test: the parent on w0, the child on w1 with its shared prefix moved over.
    moved = {"kv_parent": "intro", "kv_saving_s": 0.5, "kv_move_s": 0.01}
    problem = PlanProblem(
        tasks=(LLMTask("intro", SOURCE, 1.0, 1.0), LLMTask("more", SOURCE, 1.0, 1.0, depends_on=("intro",), **moved)),
        workers=(Worker("w0"), Worker("w1")),
        model_load_s={SOURCE: 1.0},
    )
    plan = evaluate(problem, [[("intro", "w0")], [("more", "w1")]], "forced")
    assert [p.kv for e in plan.epochs for p in e.placements] == ["-", "move"]
    with halo.compile(
        wf, workers=2, ray_address=cluster.address, worker_cpus=1, worker_resources=["node_a", "node_b"], **options
    ) as app:
        w0, w1 = app.workers
        labelled = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        assert len(labelled) == 2
        assert "node_a" in labelled[w0.node_id()] and "node_b" in labelled[w1.node_id()]  # one worker per node
        graph = consolidate(wf, rows, app._tokenizers)
        execution = emit(graph, plan, 2, {"more": "intro"})
        with ToolRunner(wf) as tools:
            outcome = Processor(graph, rows, execution, app.workers, tools, tokenizers=app._tokenizers).run()
        moved = w1.imported_tokens()
        stats = w1.stats()
    assert outcome.errors == {}
    assert outcome.calls_by_worker == {0: 2, 1: 2}  # the parents on node_a, the children on node_b
    assert outcome.kv_moves == 2  # two distinct cities
    assert moved >= 4 * 16  # whole blocks of the shared system prompt crossed from node_a to node_b
    assert stats.cached_tokens >= moved  # and the children reused them there
    with halo.compile(wf, **options) as one:
        reference = one.run(rows)
    assert [outcome.outputs[r] for r in range(len(rows))] == reference.outputs
