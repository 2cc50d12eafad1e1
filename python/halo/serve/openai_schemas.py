"""The slice of OpenAI's wire format Halo serves: the chat-completions and (legacy) completions request
models, what each asks of the engine (a `Plan`), and the JSON of responses and stream chunks.

A request field is one of three kinds. Supported ones drive the engine — chat: `model`, `messages`,
`max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `top_k` (vLLM's extension), `seed`, `stop`,
`n`, `response_format` (`text`, `json_object`, `json_schema`), `logprobs`/`top_logprobs`, `stream`,
`stream_options.include_usage`; completions: `prompt` (a string, a list of strings, token ids or lists of
token ids), `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`, `n`, `logprobs`, `stream`,
`stream_options.include_usage`. Metadata that cannot change the answer (`user`, `metadata`, `store`, ...)
is accepted and ignored. Every other field, OpenAI's (`tools`, `parallel_tool_calls`, `logit_bias`,
penalties, `echo`, `suffix`, ...) or not, is refused with a 400 that names it, unless it holds its
neutral value (`null`, `false`, `[]`, ...): answering as if the field were absent would silently return
something the client did not ask for.

`n` choices of one prompt are `n` engine requests of that prompt (the engine's prefix cache shares the
prompt's KV); choice `i` samples with `seed + i`, so a seeded request is reproducible and its choices
differ. Greedy decoding (`temperature: 0`) with `n > 1` is refused: every choice would be the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from halo.errors import InvalidRequestError
from halo.runtime.chat_engine import GenerationResult, OutputFormat, SamplingParams
from halo.spec.structured_output import grammar_problem

ROLE_ALIASES = {"developer": "system"}
MAX_TOKENS_LIMIT = (1 << 31) - 1
SEED_LIMIT = (1 << 63) - 1
MAX_STOP = 16
MAX_N = 128  # choices per prompt
MAX_TOP_LOGPROBS = 20  # chat's `top_logprobs` (OpenAI's bound)
MAX_COMPLETION_LOGPROBS = 5  # completions' `logprobs` (OpenAI's bound)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

# OpenAI fields the engine does not implement, with the values that ask for nothing (so are accepted).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None,),  # no tools are ever called, so no value of it has a meaning here
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "moderation": (None,),
}
IGNORED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)
COMPLETION_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
}
COMPLETION_IGNORED = frozenset({"user"})
# Fields of an assistant message a client echoes back from an earlier response (neutral when empty).
MESSAGE_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tool_calls": (None, []),
    "function_call": (None,),
    "tool_call_id": (None,),
    "audio": (None,),
    "refusal": (None,),
    "annotations": (None, []),
}

StopList = Annotated[list[str], Field(max_length=MAX_STOP)]
Prompt = list[dict[str, str]] | str | list[int]  # chat messages, text, or token ids (as the engine takes them)


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


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: the schema is always enforced while decoding, `strict` or not."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")  # None: any JSON object
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def check_supported(self) -> None:
        _no_extras(self, "response_format.")
        if self.json_schema is not None:
            _no_extras(self.json_schema, "response_format.json_schema.")
        if self.type == "json_schema" and self.json_schema is None:
            raise UnsupportedField(
                "response_format.json_schema", "response_format of type json_schema needs response_format.json_schema"
            )
        if self.type != "json_schema" and self.json_schema is not None:
            raise UnsupportedField(
                "response_format.json_schema",
                f"response_format.json_schema goes with type json_schema, not {self.type}",
            )

    def output_format(self) -> OutputFormat | None:
        """The format to enforce; a schema the grammar engine cannot compile is a 400 naming it (checked here,
        with the compiler the spec uses, so the answer names the field instead of failing in the engine)."""
        if self.type == "text":
            return None
        schema = self.json_schema.json_schema if self.json_schema is not None else None
        if schema is not None:
            problem = grammar_problem(schema=schema)
            if problem is not None:
                raise UnsupportedField(
                    "response_format.json_schema.schema",
                    f"response_format.json_schema.schema does not compile: {problem}",
                )
        try:
            return OutputFormat.of_json(schema)
        except InvalidRequestError as exc:
            raise UnsupportedField("response_format", str(exc)) from None


@dataclass(frozen=True)
class Plan:
    """What one request asks of the engine: `choices[i]` is choice i's (prompt, params), in index order;
    `max_tokens=None` leaves it to the server's default (clipped to the context); `top_logprobs` is None
    when no log-probabilities were asked for, else how many alternatives each token reports."""

    model: str
    choices: list[tuple[Prompt, SamplingParams]]
    max_tokens: int | None
    stream: bool
    include_usage: bool
    n: int  # choices per prompt (usage counts each prompt once)
    top_logprobs: int | None = None


class GenerationRequest(BaseModel):
    """The sampling fields chat and completions share, and how they become engine requests."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = Field(default=None, ge=0, le=MAX_TOKENS_LIMIT)
    seed: int | None = Field(default=None, ge=0, le=SEED_LIMIT)
    stop: str | StopList | None = None  # (the bound is on the list: a stop string may be long)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def _check_common(self, unsupported: dict[str, tuple[Any, ...]], ignored: frozenset[str]) -> None:
        for name, value in (self.model_extra or {}).items():
            _check_field(name, value, unsupported, ignored, "")
        if self.stream_options is not None:
            _no_extras(self.stream_options, "stream_options.", "Unrecognized stream option")
        if (self.n or 1) > 1 and self._temperature() == 0.0:
            raise UnsupportedField(
                "n",
                f"n={self.n} needs sampling: with temperature 0 (greedy decoding) every "
                "choice would be the same text; set temperature > 0 or n to 1",
            )

    def _temperature(self) -> float:
        return 1.0 if self.temperature is None else self.temperature  # OpenAI's default

    def _params(self, index: int, max_tokens: int | None, output_format: OutputFormat | None,
                logprobs: int | None) -> SamplingParams:  # fmt: skip
        """Choice `index`'s params (max_tokens is settled by the chat front when none was given)."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else 1,
            temperature=self._temperature(),
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            seed=None if self.seed is None else (self.seed + index) % (SEED_LIMIT + 1),
            stop=tuple(stop),
            output_format=output_format,
            logprobs=logprobs,
        )

    def _plan(self, prompts: Sequence[Prompt], max_tokens: int | None, output_format: OutputFormat | None,
              logprobs: int | None) -> Plan:  # fmt: skip
        n = self.n or 1
        choices = [(prompt, self._params(i, max_tokens, output_format, logprobs))
                   for prompt in prompts for i in range(n)]  # fmt: skip
        include_usage = bool(self.stream_options and self.stream_options.include_usage)
        return Plan(self.model, choices, max_tokens, self.stream, include_usage, n, logprobs)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = Field(default=None, strict=True)  # `1` is no boolean
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def check_supported(self) -> None:
        """Raise UnsupportedField for the first field the engine cannot honour (see the module doc)."""
        self._check_common(UNSUPPORTED, IGNORED)
        for i, message in enumerate(self.messages):
            for name, value in (message.model_extra or {}).items():
                _check_field(name, value, MESSAGE_UNSUPPORTED, frozenset(), f"messages[{i}].")
        if self.response_format is not None:
            self.response_format.check_supported()
        if (self.max_tokens is not None and self.max_completion_tokens is not None
                and self.max_tokens != self.max_completion_tokens):  # fmt: skip
            raise UnsupportedField(
                "max_completion_tokens",
                f"max_completion_tokens ({self.max_completion_tokens}) and max_tokens "
                f"({self.max_tokens}) disagree; send one of them",
            )
        if self.top_logprobs and not self.logprobs:
            raise UnsupportedField("top_logprobs", "top_logprobs needs logprobs: true")

    def engine_messages(self) -> list[dict[str, str]]:
        """Messages as the engine's chat template takes them: text content, known roles."""
        out = []
        for i, message in enumerate(self.messages):
            content = message.content
            if isinstance(content, list):
                parts = []
                for j, part in enumerate(content):
                    if part.type != "text" or part.text is None:
                        raise UnsupportedField(
                            f"messages[{i}].content[{j}]",
                            f"messages[{i}].content[{j}]: only text content parts are supported, "
                            f"got type {part.type!r}",
                        )
                    parts.append(part.text)
                content = "".join(parts)
            out.append({"role": ROLE_ALIASES.get(message.role, message.role), "content": content or ""})
        return out

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def plan(self) -> Plan:
        """The checked request as engine requests (raises UnsupportedField / InvalidRequestError)."""
        self.check_supported()
        output_format = self.response_format.output_format() if self.response_format is not None else None
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._plan([self.engine_messages()], self.requested_max_tokens(), output_format, logprobs)


class CompletionRequest(GenerationRequest):
    """`/v1/completions`: `max_tokens` defaults to OpenAI's 16; `echo`, `suffix`, `best_of` > 1 are 400s."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)

    @field_validator("logprobs", mode="before")
    @classmethod
    def _count_not_flag(cls, value: Any) -> Any:
        if isinstance(value, bool):  # chat's `logprobs: true` sent here would otherwise count as 1
            raise ValueError("logprobs is a count of alternatives per token (0-5) here, not a boolean")
        return value

    def check_supported(self) -> None:
        self._check_common(COMPLETION_UNSUPPORTED, COMPLETION_IGNORED)

    def prompts(self) -> list[Prompt]:
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [prompt]  # type: ignore[list-item]  # one text, or one prompt of token ids
        if not prompt:
            raise UnsupportedField("prompt", "prompt must not be an empty list")
        return list(prompt)  # type: ignore[arg-type]  # several texts, or several token-id prompts

    def plan(self) -> Plan:
        self.check_supported()
        max_tokens = self.max_tokens if self.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        return self._plan(self.prompts(), max_tokens, None, self.logprobs)


def _no_extras(model: BaseModel, prefix: str, what: str = "Unrecognized request argument supplied") -> None:
    for name in model.model_extra or {}:
        raise UnsupportedField(prefix + name, f"{what}: {prefix}{name}")


def _check_field(
    name: str, value: Any, unsupported: dict[str, tuple[Any, ...]], ignored: frozenset[str], prefix: str
) -> None:
    param = prefix + name
    if name in ignored:
        return
    if name not in unsupported:
        raise UnsupportedField(param, f"Unrecognized request argument supplied: {param}")
    if not any(_same(value, neutral) for neutral in unsupported[name]):
        raise UnsupportedField(
            param, f"{param} is not supported by this server (got {_short(value)}); leave it out or send null"
        )


def _same(value: Any, neutral: Any) -> bool:
    """JSON equality: `false` is neither `0` nor `null` here (Python's `False == 0` would blur them)."""
    if isinstance(value, bool) or isinstance(neutral, bool) or value is None or neutral is None:
        return type(value) is type(neutral) and value == neutral
    return bool(value == neutral)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- responses ----------------------------------------------------------------------------------------------

TokenBytes = Callable[[int], bytes]  # a token id's bytes as the tokenizer decodes it


def usage(results: Sequence[GenerationResult], n: int = 1) -> dict[str, Any]:
    """Usage of `results` (n choices per prompt, in plan order): each prompt counted once, every choice's
    completion tokens; cached tokens are those of a prompt found cached for every one of its choices."""
    prompts = [results[i : i + n] for i in range(0, len(results), n)]
    prompt_tokens = sum(group[0].prompt_tokens for group in prompts)
    cached = sum(min(r.cached_tokens for r in group) for group in prompts)
    completion = sum(len(r.token_ids) for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _token_logprobs(result: GenerationResult) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """(token id, its log-probability, the top alternatives as (id, logprob)) per generated token."""
    tops = result.top_logprobs or [[] for _ in result.token_logprobs]  # empty when logprobs=0
    return list(zip(result.token_ids, result.token_logprobs, tops, strict=True))


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(result: GenerationResult, top: int, token_bytes: TokenBytes) -> dict[str, Any]:
    """`choices[i].logprobs` of a chat completion: `content` with each token's text, logprob, UTF-8 bytes
    and its `top` most likely alternatives."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        piece = token_bytes(token)
        return {"token": _text(piece), "logprob": logprob, "bytes": list(piece)}

    content = []
    for token, logprob, alternatives in _token_logprobs(result):
        content.append({**entry(token, logprob),
                        "top_logprobs": [entry(t, lp) for t, lp in alternatives[:top]]})  # fmt: skip
    return {"content": content, "refusal": None}


def text_logprobs(result: GenerationResult, top: int, token_bytes: TokenBytes) -> dict[str, Any]:
    """`choices[i].logprobs` of a text completion: OpenAI's legacy columns; `text_offset` counts characters
    from the start of the choice's text (no echo), and each `top_logprobs` dict holds the `top` most likely
    tokens plus the sampled one (so up to top + 1, as OpenAI's)."""
    tokens, chosen, tops, offsets = [], [], [], []
    offset = 0
    for token, logprob, alternatives in _token_logprobs(result):
        text = _text(token_bytes(token))
        tokens.append(text)
        chosen.append(logprob)
        offsets.append(offset)
        offset += len(text)
        best = {_text(token_bytes(t)): lp for t, lp in alternatives[:top]}
        best.setdefault(text, logprob)
        tops.append(best)
    return {"tokens": tokens, "token_logprobs": chosen, "top_logprobs": tops, "text_offset": offsets}


@dataclass(frozen=True)
class Wire:
    """How one endpoint writes its answers: chat (`message`/`delta`) or text completions (`text`)."""

    kind: Literal["chat", "text"]

    @property
    def id_prefix(self) -> str:
        return "chatcmpl-" if self.kind == "chat" else "cmpl-"

    def logprobs(self, result: GenerationResult, top: int | None, token_bytes: TokenBytes) -> dict[str, Any] | None:
        if top is None:
            return None
        render = chat_logprobs if self.kind == "chat" else text_logprobs
        return render(result, top, token_bytes)

    def completion(self, completion_id: str, model: str, results: Sequence[GenerationResult], n: int,
                   top: int | None, token_bytes: TokenBytes) -> dict[str, Any]:  # fmt: skip
        choices = []
        for index, result in enumerate(results):
            choice: dict[str, Any] = {"index": index}
            if self.kind == "chat":
                choice["message"] = {"role": "assistant", "content": result.text}
            else:
                choice["text"] = result.text
            choice["finish_reason"] = result.finish_reason
            choice["logprobs"] = self.logprobs(result, top, token_bytes)
            choices.append(choice)
        return {
            "id": completion_id,
            "object": "chat.completion" if self.kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage(results, n),
            "system_fingerprint": None,
        }

    def opening(self, index: int) -> dict[str, Any] | None:
        """The choice's first stream delta (chat announces the role; text completions send nothing)."""
        return {"role": "assistant", "content": ""} if self.kind == "chat" else None

    def chunk(self, completion_id: str, model: str, created: int, index: int | None, text: str | None,
              finish_reason: str | None = None, logprobs: dict[str, Any] | None = None,
              usage_: dict[str, Any] | None = None, delta: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """One stream chunk of choice `index`; `index=None` makes the usage-only chunk (no choices)."""
        choices: list[dict[str, Any]] = []
        if index is not None:
            choice: dict[str, Any] = {"index": index}
            if self.kind == "chat":
                choice["delta"] = delta if delta is not None else ({} if text is None else {"content": text})
            else:
                choice["text"] = text or ""
            choice["finish_reason"] = finish_reason
            choice["logprobs"] = logprobs
            choices.append(choice)
        chunk: dict[str, Any] = {"id": completion_id,
                                 "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                                 "created": created, "model": model, "choices": choices,
                                 "system_fingerprint": None}  # fmt: skip
        if usage_ is not None:
            chunk["usage"] = usage_
        return chunk


CHAT = Wire("chat")
TEXT = Wire("text")


def model_json(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "halo"}
