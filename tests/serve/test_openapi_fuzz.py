"""Schemathesis against the server's own OpenAPI document, as a standing test: every operation, with
schemathesis's built-in checks (no 5xx; status codes, content types, headers and bodies as documented;
documented-valid data accepted; auth enforced), on a real server over loopback with two compiled
rule-only workflows. The document names the workflows and their inputs, so generated requests reach
past 404 into real runs. Bounded and deterministic: a few examples per operation, derandomized."""

from __future__ import annotations

import pytest
from conftest import ECHO_YAML, start_server

schemathesis = pytest.importorskip("schemathesis")

KEY = "fuzz-key"
EXAMPLES = 4  # per operation: ~15 operations, a few dozen requests, seconds
AUTH = {"Authorization": f"Bearer {KEY}"}
PAIR_YAML = """
name: pair
inputs: [left, right]
nodes:
  - id: joined
    kind: rule
    input: "{{ left }}|{{ right }}"
    regex: "(.*)"
outputs:
  joined: joined.output
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import halo
    from halo.serve import ServeConfig, create_app

    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "echo.yaml").write_text(ECHO_YAML)
    (folder / "pair.yaml").write_text(PAIR_YAML)
    apps = {name: halo.compile(folder / f"{name}.yaml") for name in ("echo", "pair")}
    running = start_server(create_app(apps, None, ServeConfig(epoch_ms=5, queue_limit=64, api_key=KEY)))
    yield running
    running.stop()
    for app in apps.values():
        app.close()


def test_the_server_keeps_its_openapi_contract(server):
    # Driven through schemathesis's Python API, not its pytest plugin (whose lazy fixture loader does not
    # run under pytest 9): one hypothesis test per operation, a few derandomized examples each.
    from hypothesis import HealthCheck, given, settings

    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH)
    api.config.update(base_url=server.url)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 12
    tried: list[str] = []
    for operation in operations:

        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        def check(case):
            case.call_and_validate(headers=AUTH, timeout=30)

        check()
        tried.append(operation.label)
    assert "POST /v1/workflows/pair/runs" in tried and "POST /v1/chat/completions" in tried
    assert "POST /v1/completions" in tried
    statuses = server.state.metrics.statuses
    assert statuses.get(("/v1/workflows/{name}/runs", 202), 0) >= 2  # generated rows ran, not only 4xx
    assert sum(statuses.values()) >= 30
    assert not [key for key in statuses if key[1] >= 500]


def test_the_document_names_workflows_inputs_and_the_error_shape(server):
    import httpx

    doc = httpx.get(f"{server.url}/openapi.json", headers=AUTH).json()
    body = doc["paths"]["/v1/workflows/pair/runs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["example"] == {"left": "example left", "right": "example right"}
    assert body["schema"]["anyOf"][0]["required"] == ["left", "right"]
    assert "/v1/workflows/{name}/runs" not in doc["paths"]  # one path per workflow instead
    name = doc["paths"]["/v1/workflows/{name}"]["get"]["parameters"][0]
    assert name["schema"]["enum"] == ["echo", "pair"]
    assert doc["paths"]["/v1/chat/completions"]["post"]["responses"]["400"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/Error"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
