"""`openapi_document`: the server's OpenAPI schema, precise enough to fuzz against.

The routes read their bodies raw (`request_body.read_json`), so FastAPI alone documents neither
bodies nor the error shape. This fills both in from what the server really accepts: the chat request
(only supported fields; `model` one of the served models), per workflow a `POST
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

from halo.serve.openai_schemas import MAX_STOP, ChatCompletionRequest
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
    chat = chat_request_schema(models)
    schemas.update(chat.pop("$defs", {}))
    schemas["ChatCompletionRequest"] = chat
    paths = doc["paths"]
    paths["/v1/chat/completions"]["post"]["requestBody"] = _json_body(
        {"$ref": "#/components/schemas/ChatCompletionRequest"}
    )
    paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"] = {
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


def chat_request_schema(models: list[str]) -> dict[str, Any]:
    """The documented chat request: the supported fields only, in the ranges the engine takes."""
    schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schema["additionalProperties"] = False
    props = schema["properties"]
    if models:
        props["model"] = {"type": "string", "enum": models}
    props["temperature"] = _optional({"type": "number", "minimum": 0, "maximum": 10})
    props["top_p"] = _optional({"type": "number", "exclusiveMinimum": 0, "maximum": 1})
    props["n"] = _optional({"type": "integer", "enum": [1]})
    stop = {"type": "string", "minLength": 1}
    props["stop"] = {"anyOf": [stop, {"type": "array", "items": stop, "maxItems": MAX_STOP}, {"type": "null"}]}
    defs = schema.get("$defs", {})
    for definition in defs.values():
        definition["additionalProperties"] = False
    if "ContentPart" in defs:  # text parts only
        defs["ContentPart"]["properties"] = {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}
        defs["ContentPart"]["required"] = ["type", "text"]
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
