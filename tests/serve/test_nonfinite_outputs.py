"""A run whose output holds NaN or ±Infinity is answered as valid JSON (null), in `GET /v1/runs/{id}`,
in its server-sent events and in the server's run journal — the same rule as `halo run`'s files."""

from __future__ import annotations

import json

import halo
import httpx
from conftest import start_server
from halo.serve import ServeConfig, create_app
from halo.spec import Workflow

FIELDS = """
name: fields
inputs: [x]
nodes:
  - {id: pick, kind: rule, input: "{{ x }}", field: f}
outputs: {v: pick.output}
"""


def _strict(text: str):
    def refuse(constant: str):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinity_in_outputs_are_null_everywhere_the_server_writes(tmp_path):
    app = halo.compile(Workflow.from_yaml(FIELDS))
    running = start_server(create_app({"fields": app}, None, ServeConfig(epoch_ms=20, journal_dir=str(tmp_path))))
    try:
        # Python's json reads NaN/Infinity in the row's text: the rule node's output is a real float nan.
        rows = [{"x": '{"f": NaN}'}, {"x": '{"f": [1.5, -Infinity]}'}, {"x": '{"f": 2}'}]
        answer = httpx.post(f"{running.url}/v1/workflows/fields/runs", json=rows, timeout=30)
        assert answer.status_code == 202, answer.text
        ids = answer.json()["ids"]
        outputs = []
        for run_id in ids:
            got = httpx.get(f"{running.url}/v1/runs/{run_id}", params={"wait": "true"}, timeout=60)
            assert got.status_code == 200, got.text
            body = _strict(got.text)
            assert body["status"] == "succeeded"
            outputs.append(body["output"]["v"])
            events = httpx.get(f"{running.url}/v1/runs/{run_id}/events", timeout=60).text
            for line in events.splitlines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    _strict(line[len("data: "):])
        assert outputs == [None, [1.5, None], 2]
    finally:
        running.stop()
        app.close()
    for line in (tmp_path / "runs.jsonl").read_text().splitlines():
        _strict(line)
