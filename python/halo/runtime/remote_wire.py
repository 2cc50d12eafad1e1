"""The OpenAI wire format of a remote model's calls: an `LLMJob` as a request body, a response as replies.

Sampling maps field for field onto what OpenAI (and halo serve, serve/openai_schemas.py) accept:
`max_tokens`, `temperature`, `top_p`, `seed`, `stop`, `n` (sample `i` seeded `seed + i` by the server,
as a local worker seeds it), and for chat a JSON output as `response_format` (`json_schema` with the
node's schema, `json_object` for any JSON object). `choices`/`regex`/scoring/logprobs are refused by
the spec (spec/remote_checks.py), so no job here asks for them. The chat API sends the node's messages;
the completions API sends one prompt text: the chat template of the model's declared tokenizer applied
to the messages, else the messages' contents joined by blank lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from halo.plan.chat_tokenizer import ChatTokenizer
from halo.runtime.llm_worker import LLMJob, LlmReply

BODY_EXCERPT = 300  # characters of an error response quoted in a row's error


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


def request_body(job: LLMJob, model: str, api: str, template: ChatTokenizer | None) -> dict[str, Any]:
    """The JSON body of `job`'s request to the endpoint serving `model` (the module docstring)."""
    params = job.params
    body: dict[str, Any] = {"model": model, "max_tokens": params.max_tokens, "temperature": params.temperature}
    if params.top_p != 1.0:
        body["top_p"] = params.top_p
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if job.n != 1:
        body["n"] = job.n
    messages = job.prompt
    if messages and not isinstance(messages[0], dict):
        raise ValueError("a remote model takes chat messages, not token ids")  # the Processor sends messages
    if api == "chat":
        body["messages"] = messages
        output_format = params.output_format
        if output_format is not None and output_format.kind == "json":
            if output_format.schema is None:
                body["response_format"] = {"type": "json_object"}
            else:
                schema = json.loads(output_format.schema)
                body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    else:
        if template is not None:
            body["prompt"] = template.render_chat(messages)  # type: ignore[arg-type]
        else:
            body["prompt"] = "\n\n".join(str(m["content"]) for m in messages)  # type: ignore[index]
    return body


def parse_response(payload: Any, api: str, n: int) -> tuple[tuple[LlmReply, ...], Usage]:
    """The `n` replies (in choice order) and the usage of a successful response; ValueError if malformed."""
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        raise ValueError("the response has no 'choices' list")
    choices = sorted(payload["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    if len(choices) != n:
        raise ValueError(f"asked for {n} choice(s), got {len(choices)}")
    replies = []
    for choice in choices:
        if api == "chat":
            message = choice.get("message") if isinstance(choice, dict) else None
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text") if isinstance(choice, dict) else None
        if not isinstance(text, str):
            raise ValueError("a choice has no text content")
        replies.append(LlmReply(text, choice.get("finish_reason")))
    usage = payload.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return tuple(replies), Usage(
        int(usage.get("prompt_tokens") or 0),
        int(details.get("cached_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )


def excerpt(text: str) -> str:
    """The start of an error body, on one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= BODY_EXCERPT else flat[:BODY_EXCERPT] + "..."
