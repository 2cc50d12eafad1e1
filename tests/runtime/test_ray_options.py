"""Where Ray workers go (`RayOptions`): each option is checked with a clear error before anything starts,
and the placements follow the options (CPUs per worker, one node label per worker). No Ray is started
here: the checks against a live cluster's resources are in test_two_workers.py and test_ray_cluster.py."""

from __future__ import annotations

import os
from pathlib import Path

import halo
import pytest
from halo.cli import main
from halo.errors import InvalidRequestError
from halo.runtime.ray_worker import Placement
from halo.runtime.workers import LABEL_SHARE, RayOptions

CLUSTER = {"CPU": 4.0, "memory": 1e9, "node_a": 1.0, "node_b": 1.0, "node:127.0.0.1": 1.0}


@pytest.mark.parametrize(
    ("options", "workers", "message"),
    [
        (RayOptions(worker_resources=("node_a",)), 2, r"names 1 resources \(node_a\) for 2 workers: give one per"),
        (RayOptions(worker_cpus=0), 2, "worker_cpus must be a positive number, got 0"),
        (RayOptions(worker_cpus=True), 2, "worker_cpus must be a positive number, got True"),
        (RayOptions(worker_cpus="2"), 2, "worker_cpus must be a positive number, got '2'"),  # type: ignore[arg-type]
        (RayOptions(worker_resources=("node_a", "")), 2, "worker_resources: '' is not a custom resource name"),
        (RayOptions(worker_resources=("CPU", "GPU")), 2, "worker_resources: 'CPU' is not a custom resource name"),
        (RayOptions(address=" "), 2, "ray_address must be a non-empty string like 'HOST:PORT'"),
        (RayOptions(address="127.0.0.1:6379"), 1, "they need workers >= 2 \\(one worker runs in this process\\)"),
    ],
)
def test_bad_options_are_refused_with_what_is_wrong(options: RayOptions, workers: int, message: str):
    with pytest.raises(InvalidRequestError, match=message):
        options.check(workers)


def test_placements_reserve_the_cpus_and_ask_for_each_workers_label():
    placements = RayOptions(worker_cpus=1.5, worker_resources=("node_b", "node_a", "node_b")).placements(2, CLUSTER)
    assert placements == [
        Placement(1.5, {"node_b": LABEL_SHARE}),
        Placement(1.5, {"node_a": LABEL_SHARE}),
        Placement(1.5, {"node_b": LABEL_SHARE}),
    ]
    assert [p.threads for p in placements] == [1, 1, 1]  # the engine runs the whole CPUs, at least one
    default = RayOptions().placements(2, {"CPU": 64.0})
    assert default == [Placement(max(1, (os.cpu_count() or 2) // 2))] * 2  # this machine's cores / workers


def test_placements_the_cluster_cannot_hold_are_refused():
    with pytest.raises(InvalidRequestError, match=r"2 workers of 3 CPUs need 6 CPUs; the Ray cluster at h:1 has 4"):
        RayOptions("h:1", 3).placements(2, CLUSTER)
    with pytest.raises(InvalidRequestError, match=r"no node of the local Ray offers resource 'gpu' \(its custom "):
        RayOptions(worker_resources=("gpu", "node_a")).placements(2, CLUSTER)
    with pytest.raises(InvalidRequestError, match=r"\(its custom resources: node_a, node_b\)"):
        RayOptions(worker_resources=("gpu", "node_a")).placements(2, CLUSTER)


def test_compile_checks_the_options_before_starting_anything():
    wf = halo.Workflow("w").inputs("q").llm("a", prompt="{{ q }}", max_tokens=2).outputs(a="a.output")
    with pytest.raises(InvalidRequestError, match="worker_resources must be a list of names"):
        halo.compile(wf, workers=2, worker_resources="node_a")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="names 3 resources"):
        halo.compile(wf, workers=2, worker_resources=["a", "b", "c"])
    with pytest.raises(InvalidRequestError, match="they need workers >= 2"):
        halo.compile(wf, ray_address="127.0.0.1:6379")


def test_halo_run_takes_the_ray_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    workflow = tmp_path / "w.yaml"
    node = "{id: a, kind: llm, prompt: '{{ q }}', max_tokens: 2}"
    workflow.write_text(f"name: w\ninputs: [q]\nnodes:\n  - {node}\noutputs: {{a: a.output}}\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"q": "hi"}\n')
    command = ["run", str(workflow), "--input", str(rows), "--output", str(tmp_path / "out.jsonl"), "--quiet"]
    ray = ["--ray-address", "127.0.0.1:1", "--worker-cpus", "1", "--worker-resources", "node_a, node_b, node_c"]
    assert main([*command, "--workers", "2", *ray]) == 2
    assert "worker_resources names 3 resources (node_a, node_b, node_c) for 2 workers" in capsys.readouterr().err
