"""`openapi_document`: the server's OpenAPI schema, precise enough to fuzz against.

The routes read their bodies raw (`request_body.read_json`), so FastAPI alone documents neither
bodies nor the error shape. This fills both in from what the server really accepts: the chat and
completions requests (only supported fields; `model` one of the served models; the rules that tie
fields together, e.g. `n > 1` only when sampling, as `allOf` constraints), per workflow a `POST
/v1/workflows/<name>/runs` whose rows hold exactly its declared inputs (scalars within the ranges the
server takes), with an example row, in place of the generic `{name}` one (a single body schema could not
say which inputs go with which name), `GET /v1/workflows/{name}` limited to the loaded workflows,
OpenAI's error object for every 4xx/5xx a route answers, and the bearer scheme when a key is set.
A client (or schemathesis) that sends what this document allows gets a 2xx, or 404/429/503.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from halo.serve.openai_schemas import MAX_N, MAX_STOP, ChatCompletionRequest, CompletionRequest
from halo.serve.request_body import INT64_MAX, INT64_MIN

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
# A row's input value as documented: a scalar the server takes (strings, booleans, null, 64-bit integers,
# finite numbers). Rows may hold nested values too; the document keeps to what every workflow renders.
INPUT_VALUE = {
    "anyOf": [
        {"type": "string", "maxLength": 1000},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
        {"type": "number", "minimum": -1e15, "maximum": 1e15},
    ]
}
ERRORS_BY_ROUTE = {  # what each operation may answer besides its success (401 is added when a key is set)
    ("get", "/v1/models/{model_id}"): ("404",),
    ("post", "/v1/chat/completions"): ("400", "404", "413", "429", "500", "503"),
    ("post", "/v1/completions"): ("400", "404", "413", "429", "500", "503"),
    ("get", "/v1/workflows/{name}"): ("404",),
    ("post", "/v1/workflows/{name}/runs"): ("400", "404", "413", "422", "429", "503"),
    ("get", "/v1/runs/{run_id}"): ("404", "422"),
    ("get", "/v1/runs/{run_id}/events"): ("404",),
}
OPEN_ROUTES = frozenset({"/health"})


def openapi_document(base: dict[str, Any], apps: Mapping[str, Any], models: list[str], *, queue_limit: int,
                     api_key_set: bool) -> dict[str, Any]:  # fmt: skip
    """`base` (FastAPI's own schema) completed as the module doc says; `apps` maps names to workflows."""
    doc = copy.deepcopy(base)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
    paths = doc["paths"]
    for path, name, schema in (
        ("/v1/chat/completions", "ChatCompletionRequest", chat_request_schema(models, queue_limit)),
        ("/v1/completions", "CompletionRequest", completion_request_schema(models, queue_limit)),
    ):
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
        paths[path]["post"]["requestBody"] = _json_body({"$ref": f"#/components/schemas/{name}"})
        paths[path]["post"]["responses"]["200"]["content"] = {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": {"schema": {"type": "string"}},
        }
    paths["/v1/runs/{run_id}/events"]["get"]["responses"]["200"]["content"] = {
        "text/event-stream": {"schema": {"type": "string"}}
    }
    paths["/metrics"]["get"]["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    generic = paths["/v1/workflows/{name}/runs"]["post"]
    generic["requestBody"] = _json_body(_rows_schema(
        {"type": "object", "additionalProperties": INPUT_VALUE}, queue_limit))  # fmt: skip
    names = sorted(apps)
    for method, path in (("get", "/v1/workflows/{name}"), ("post", "/v1/workflows/{name}/runs")):
        for parameter in paths[path][method].get("parameters", []):
            if parameter["name"] == "name" and names:
                parameter["schema"] = {"type": "string", "enum": names}
    for name in names:
        inputs = list(apps[name].workflow.spec.inputs)
        operation = copy.deepcopy(generic)
        operation["parameters"] = []
        operation["operationId"] = f"create_runs_{name}"
        operation["summary"] = f"Run workflow '{name}' on one row or a list of rows"
        operation["requestBody"] = _json_body(_rows_schema(_row_schema(inputs), queue_limit),
                                              example={i: f"example {i}" for i in inputs})  # fmt: skip
        paths[f"/v1/workflows/{name}/runs"] = {"post": operation}
    if names:  # the per-workflow paths say exactly what each takes; one generic body could not
        del paths["/v1/workflows/{name}/runs"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's HTTPValidationError: this server answers Error instead
            runs = path.startswith("/v1/workflows/") and path.endswith("/runs")
            codes = list(ERRORS_BY_ROUTE.get((method, "/v1/workflows/{name}/runs" if runs else path), ()))
            if api_key_set and path not in OPEN_ROUTES:
                codes.append("401")
                operation["security"] = [{"bearer": []}]
            for code in codes:
                responses[code] = {
                    "description": "an error in OpenAI's shape",
                    "content": {"application/json": {"schema": ERROR_REF}},
                }
    if api_key_set:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def chat_request_schema(models: list[str], queue_limit: int = 1024) -> dict[str, Any]:
    """The documented chat request: the supported fields only, in the ranges the engine takes."""
    schema = _request_schema(ChatCompletionRequest, models, queue_limit)
    # top_logprobs only with logprobs: true
    schema["allOf"].append({"anyOf": [
            {"properties": {"top_logprobs": {"enum": [0, None]}}},
            {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
        ]})  # fmt: skip
    # max_tokens and max_completion_tokens are one setting: not both (the server takes both only if equal)
    schema["allOf"].append({"anyOf": [
        {"properties": {"max_tokens": {"type": "null"}}},
        {"properties": {"max_completion_tokens": {"type": "null"}}},
    ]})  # fmt: skip
    defs = schema.get("$defs", {})
    if "ContentPart" in defs:  # text parts only
        defs["ContentPart"]["properties"] = {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}
        defs["ContentPart"]["required"] = ["type", "text"]
    if "ResponseFormat" in defs:  # json_schema goes with type json_schema, and only with it
        defs["ResponseFormat"]["anyOf"] = [
            {"properties": {"type": {"enum": ["text", "json_object"]}, "json_schema": {"type": "null"}}},
            {"properties": {"type": {"const": "json_schema"}}, "required": ["json_schema"]},
        ]
        defs["ResponseFormat"]["properties"]["json_schema"] = {"$ref": "#/components/schemas/JsonSchemaFormat"}
    if "JsonSchemaFormat" in defs:
        defs["JsonSchemaFormat"]["properties"]["schema"] = _optional(
            {"type": "object", "description": "a JSON Schema the grammar engine compiles (else a 400)"}
        )
    return schema


def completion_request_schema(models: list[str], queue_limit: int = 1024) -> dict[str, Any]:
    """The documented completions request: text prompts (the server also takes token ids), as many that
    every prompt's `n` choices fit the admission queue."""
    schema = _request_schema(CompletionRequest, models, queue_limit)
    props = schema["properties"]
    text = {"type": "string", "minLength": 1}
    most = max(1, queue_limit // _max_n(queue_limit))
    props["prompt"] = {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": most}]}
    return schema


def _max_n(queue_limit: int) -> int:
    return max(1, min(MAX_N, queue_limit))


def _request_schema(model: Any, models: list[str], queue_limit: int) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema["additionalProperties"] = False
    props = schema["properties"]
    if models:
        props["model"] = {"type": "string", "enum": models}
    props["temperature"] = _optional({"type": "number", "minimum": 0, "maximum": 10})
    props["top_p"] = _optional({"type": "number", "exclusiveMinimum": 0, "maximum": 1})
    props["n"] = _optional({"type": "integer", "minimum": 1, "maximum": _max_n(queue_limit)})
    stop = {"type": "string", "minLength": 1}
    props["stop"] = {"anyOf": [stop, {"type": "array", "items": stop, "maxItems": MAX_STOP}, {"type": "null"}]}
    # n > 1 only when sampling: greedy choices would all be the same (a 400)
    schema["allOf"] = [{"anyOf": [
        {"properties": {"n": {"enum": [1, None]}}},
        {"properties": {"temperature": _optional({"type": "number", "exclusiveMinimum": 0, "maximum": 10})}},
    ]}]  # fmt: skip
    for definition in schema.get("$defs", {}).values():
        definition["additionalProperties"] = False
    return schema


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _row_schema(inputs: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": inputs,
        "properties": {name: INPUT_VALUE for name in inputs},
        "additionalProperties": False,
    }


def _rows_schema(row: dict[str, Any], queue_limit: int) -> dict[str, Any]:
    return {"anyOf": [row, {"type": "array", "items": row, "minItems": 1, "maxItems": queue_limit}]}


def _json_body(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {"application/json": media}}
