"""The slice of OpenAI's chat-completions wire format Halo serves: the request model and the JSON of
responses and stream chunks.

A request field is one of three kinds. Supported ones drive the engine (`model`, `messages`,
`max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `top_k` (vLLM's extension), `seed`, `stop`,
`n`=1, `stream`, `stream_options.include_usage`). Metadata that cannot change the answer (`user`,
`metadata`, `store`, ...) is accepted and ignored. Every other field, OpenAI's (`tools`, `response_format`
other than text, `logprobs`, `logit_bias`, penalties, ...) or not, is refused with a 400 that names it,
unless it holds its neutral value (`null`, `false`, `[]`, `{"type": "text"}`): answering as if the field
were absent would silently return something the client did not ask for.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from halo.errors import InvalidRequestError
from halo.runtime.chat_engine import GenerationResult, SamplingParams

ROLE_ALIASES = {"developer": "system"}
MAX_TOKENS_LIMIT = (1 << 31) - 1
SEED_LIMIT = (1 << 63) - 1
MAX_STOP = 16

# OpenAI fields the engine does not implement, with the values that ask for nothing (so are accepted).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
}
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
                     "parallel_tool_calls"})
# Fields of an assistant message a client echoes back from an earlier response (neutral when empty).
MESSAGE_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tool_calls": (None, []),
    "function_call": (None,),
    "tool_call_id": (None,),
    "audio": (None,),
    "refusal": (None,),
    "annotations": (None, []),
}


class UnsupportedField(InvalidRequestError):
    """A request field this server does not implement (or does not know); `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # accepted; the chat template has no place for it


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted; chunks carry no obfuscation padding


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(default=None, ge=0, le=MAX_TOKENS_LIMIT)
    seed: int | None = Field(default=None, ge=0, le=SEED_LIMIT)
    stop: str | list[str] | None = Field(default=None, max_length=MAX_STOP)
    n: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def check_supported(self) -> None:
        """Raise UnsupportedField for the first field the engine cannot honour (see the module doc)."""
        if self.n not in (None, 1):
            raise UnsupportedField("n", f"n must be 1 (one choice per request), got {self.n}")
        for name, value in (self.model_extra or {}).items():
            _check_field(name, value, UNSUPPORTED, IGNORED, "")
        for i, message in enumerate(self.messages):
            for name, value in (message.model_extra or {}).items():
                _check_field(name, value, MESSAGE_UNSUPPORTED, frozenset(), f"messages[{i}].")
        if self.stream_options is not None:
            for name in self.stream_options.model_extra or {}:
                raise UnsupportedField(f"stream_options.{name}", f"Unrecognized stream option: stream_options.{name}")

    def engine_messages(self) -> list[dict[str, str]]:
        """Messages as the engine's chat template takes them: text content, known roles."""
        out = []
        for i, message in enumerate(self.messages):
            content = message.content
            if isinstance(content, list):
                parts = []
                for j, part in enumerate(content):
                    if part.type != "text" or part.text is None:
                        raise UnsupportedField(f"messages[{i}].content[{j}]",
                                               f"messages[{i}].content[{j}]: only text content parts are supported, "
                                               f"got type {part.type!r}")
                    parts.append(part.text)
                content = "".join(parts)
            out.append({"role": ROLE_ALIASES.get(message.role, message.role), "content": content or ""})
        return out

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def sampling_params(self) -> SamplingParams:
        """Validated SamplingParams (max_tokens is settled by the engine loop when none was given)."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        requested = self.requested_max_tokens()
        return SamplingParams(
            max_tokens=requested if requested is not None else 1,
            temperature=1.0 if self.temperature is None else self.temperature,  # OpenAI's default
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            seed=self.seed,
            stop=tuple(stop),
        )


def _check_field(name: str, value: Any, unsupported: dict[str, tuple[Any, ...]], ignored: frozenset[str],
                 prefix: str) -> None:
    param = prefix + name
    if name in ignored:
        return
    if name not in unsupported:
        raise UnsupportedField(param, f"Unrecognized request argument supplied: {param}")
    if not any(_same(value, neutral) for neutral in unsupported[name]):
        raise UnsupportedField(param, f"{param} is not supported by this server (got {_short(value)}); "
                               "leave it out or send null")


def _same(value: Any, neutral: Any) -> bool:
    """JSON equality: `false` is neither `0` nor `null` here (Python's `False == 0` would blur them)."""
    if isinstance(value, bool) or isinstance(neutral, bool) or value is None or neutral is None:
        return type(value) is type(neutral) and value == neutral
    return bool(value == neutral)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
