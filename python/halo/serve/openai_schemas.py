"""The slice of OpenAI's chat-completions wire format Halo serves: the request model and the JSON of
responses and stream chunks. Unknown request fields are accepted and ignored, as clients send many."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from halo.engine import GenerationResult, SamplingParams
from halo.errors import InvalidRequestError

ROLE_ALIASES = {"developer": "system"}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def engine_messages(self) -> list[dict[str, str]]:
        """Messages as the engine's chat template takes them: text content, known roles."""
        out = []
        for i, message in enumerate(self.messages):
            content = message.content
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise InvalidRequestError(f"messages[{i}]: only text content parts are supported")
                    parts.append(part["text"])
                content = "".join(parts)
            out.append({"role": ROLE_ALIASES.get(message.role, message.role), "content": content or ""})
        return out

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def sampling_params(self) -> SamplingParams:
        """Validated SamplingParams (max_tokens is settled by the engine loop when none was given)."""
        if self.n not in (None, 1):
            raise InvalidRequestError(f"n must be 1 (one choice per request), got {self.n}")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        requested = self.requested_max_tokens()
        return SamplingParams(
            max_tokens=requested if requested is not None else 1,
            temperature=1.0 if self.temperature is None else self.temperature,  # OpenAI's default
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=tuple(stop),
        )


def usage(result: GenerationResult) -> dict[str, Any]:
    completion = len(result.token_ids)
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": result.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def completion_json(completion_id: str, model: str, result: GenerationResult) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "finish_reason": result.finish_reason,
            "logprobs": None,
        }],
        "usage": usage(result),
        "system_fingerprint": None,
    }


def chunk_json(
    completion_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage_: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; `delta=None` makes the usage-only chunk (no choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                        "logprobs": None}]
    chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                             "model": model, "choices": choices, "system_fingerprint": None}
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def model_json(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "halo"}
