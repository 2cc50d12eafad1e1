"""Under `halo serve`, one client's bad row fails that client's run only: other clients' runs in the
same epoch succeed (a real compiled workflow without a model, a real server on loopback)."""

from __future__ import annotations

import threading

import halo
import httpx
from conftest import start_server
from halo.serve import ServeConfig, create_app
from halo.spec import Workflow

RULES = """
name: shout
inputs: [x]
nodes:
  - {id: up, kind: rule, input: "{{ x.upper() }}", regex: "(.*)"}
outputs: {v: up.output}
"""


def test_two_clients_in_one_epoch_one_bad_row_fails_only_its_run():
    app = halo.compile(Workflow.from_yaml(RULES))
    # A long epoch window: both clients' rows land in the same epoch.
    running = start_server(create_app({"shout": app}, None, ServeConfig(epoch_ms=1500)))
    try:
        ids: dict[str, list[str]] = {}
        barrier = threading.Barrier(2)

        def client(name: str, rows: list[dict]) -> None:
            barrier.wait()
            answer = httpx.post(f"{running.url}/v1/workflows/shout/runs", json=rows, timeout=30)
            assert answer.status_code == 202, answer.text
            ids[name] = answer.json()["ids"]

        threads = [
            threading.Thread(target=client, args=("good", [{"x": "a"}, {"x": "b"}])),
            threading.Thread(target=client, args=("bad", [{"x": {"not": "text"}}])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        runs = {
            name: [httpx.get(f"{running.url}/v1/runs/{i}", params={"wait": "true"}, timeout=60).json() for i in found]
            for name, found in ids.items()
        }
        assert [r["status"] for r in runs["good"]] == ["succeeded", "succeeded"]
        assert [r["output"]["v"] for r in runs["good"]] == ["A", "B"]
        [bad] = runs["bad"]
        assert bad["status"] == "failed"
        assert bad["error"]["node"] == "up" and "upper" in bad["error"]["message"]
        assert runs["good"][0]["epoch"] == bad["epoch"]  # they did share the epoch
    finally:
        running.stop()
        app.close()
