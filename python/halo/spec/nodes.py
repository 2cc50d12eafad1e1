"""The node kinds a workflow is made of (llm, sql, http, python, rule), as pydantic models.

These models check each node on its own (types, ranges, unknown fields); checks that need the whole
workflow (references, cycles, models, databases) live in `halo.spec.consistency`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

DEFAULT_MODEL = "smollm2-135m"
"""The model an llm node runs when it names none (the embedded SmolLM2, registered by the engine)."""

NodeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

MAX_SEED = 2**63 - 1
"""Largest sampling seed: what torch.Generator.manual_seed and OpenAI-compatible servers (int64) accept."""

MAX_SAMPLES = 128
"""Most samples one llm node draws per call (`n`), the OpenAI server's bound on `n` too."""

DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
"""An http node's response body bound when it sets none (`max_response_bytes`)."""

OUTPUT_FIELDS: dict[str, frozenset[str]] = {
    # `output` is the node's main value: llm text (or the parsed JSON when json_schema is set),
    # sql rows (a list of dicts), http value at response_path (else the body), python return, rule match.
    # An llm node with a json_schema also has `json`, one with `logprobs: true` `logprobs`, a choices node
    # `confidence` (scored, or with logprobs), a scored one `scores` and `probabilities` (`output_fields`).
    "llm": frozenset({"output", "text"}),
    "sql": frozenset({"output", "rows", "columns"}),
    "http": frozenset({"output", "status", "json", "text", "headers"}),
    "python": frozenset({"output"}),
    "rule": frozenset({"output", "matched"}),
    "reduce": frozenset({"output"}),
}

DEFAULT_MAX_ITEMS = 64
"""Most elements a `foreach` node maps over per instance unless it sets `max_items`."""


class SpecModel(BaseModel):
    """Base of every spec model: unknown fields are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)


class SqlCall(SpecModel):
    """A parameterized, read-only query: `:name` placeholders filled from `params` (templates)."""

    db: str | None = None  # a name from `databases:`; None is an embedded in-memory DuckDB
    query: str
    params: dict[str, Any] = Field(default_factory=dict)


class HttpCall(SpecModel):
    """An HTTP request; url, params, headers and string leaves of the json body are templates."""

    method: str = "GET"
    url: str
    params: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = Field(default=None, alias="json")
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    response_path: str | None = None  # e.g. "data.items[0].name": the part of the JSON kept as output
    # The most body bytes read (streamed); a larger response fails the call without being read whole.
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1, le=2**31)

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in HTTP_METHODS:
            raise ValueError(f"unknown HTTP method '{value}' (expected one of {', '.join(HTTP_METHODS)})")
        return value

    @field_validator("response_path")
    @classmethod
    def _path_syntax(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_$][\w$-]*(\[\d+\]|\.[A-Za-z_$][\w$-]*)*", value):
            raise ValueError(f"response_path '{value}' is not of the form key.key[0].key")
        return value


class EmbeddedSql(SqlCall):
    """A SQL call written inside an llm node; extracted into its own node before planning."""

    id: NodeId | None = None


class EmbeddedHttp(HttpCall):
    """An HTTP call written inside an llm node; extracted into its own node before planning."""

    id: NodeId | None = None


EXECUTION_FIELDS = frozenset({"on_error", "fallback", "retries", "expected_latency_s", "cpu_bound", "cache"})

CONTROL_FIELDS = frozenset({"when", "foreach", "as_", "max_items", "truncate"})
"""Fields that say whether and how often a node runs, not what one call requests: left out of requests
(they stay in signatures: a map node computes a list)."""
"""Fields that say how a node is executed, not what it requests: left out of signatures."""


class NodeBase(SpecModel):
    id: NodeId
    after: tuple[NodeId, ...] = ()  # ordering-only dependencies, on top of template references
    description: str | None = None
    # Conditional node: one Jinja expression (`{{ classify.output == 'billing' }}`, braces optional) read
    # per instance before it runs; it must give a boolean. False skips the instance: it reaches no engine
    # or tool, and its result is `default` as its `output` (None unless set; readers see that value).
    when: str | None = None
    default: Any = None
    # Map node: one expression giving a list (`{{ retrieve.rows }}`); the node runs once per element,
    # the element bound to `as` in its templates, and each result field becomes the list of the
    # elements' values, in order. More than `max_items` elements fail the row, or with `truncate` only
    # the first `max_items` run. Element calls are calls like any other: equal pure ones run once.
    foreach: str | None = None
    as_: NodeId = Field(default="item", alias="as")
    max_items: int = Field(default=DEFAULT_MAX_ITEMS, ge=1, le=100_000)
    truncate: bool = False
    # What a failing instance does: fail its row (the default), yield `fallback` as its output, or
    # retry up to `retries` times and then fail the row.
    on_error: Literal["fail_row", "default", "retry"] = "fail_row"
    fallback: Any = None
    retries: int = Field(default=2, ge=0, le=10)
    # The planner's latency guess for a tool call before any call was observed (seconds).
    expected_latency_s: float | None = Field(default=None, ge=0, le=3600)
    # false: never answer this node from the persistent result cache, nor store its results (a source
    # that changes under the same request: a live table, an API). Pure nodes only are cached at all.
    cache: bool = True


class LlmNode(NodeBase):
    kind: Literal["llm"] = "llm"
    model: str | None = None  # a name from `models:`; None is DEFAULT_MODEL
    system: str | None = None
    prompt: str
    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    # A structured output, enforced while decoding (at most one of the three; halo.spec.structured_output):
    # the text is exactly one of `choices`; or matches `regex` whole; or is one JSON document valid against
    # `json_schema` (written inline, or as a file path relative to the workflow, read at load), whose parsed
    # value is the node's `output` and `json`. A text cut by max_tokens or not of the format fails its row.
    choices: tuple[str, ...] | None = None
    regex: str | None = None
    json_schema: dict[str, Any] | None = None
    # How a `choices` node picks: constrained decoding (greedy, the default; sampled when temperature > 0),
    # or ranking every option by the log-probability of its tokens after the prompt, in prefill only (score;
    # sampling fields do not apply). `length_normalized` (score only) ranks by the mean token logprob.
    choice_mode: Literal["greedy", "score"] = "greedy"
    length_normalized: bool = False
    # Also return the generated tokens' log-probabilities (result field `logprobs`, one float per token,
    # from the logits after the format's mask and before temperature; jump-forward tokens are 0.0), and for
    # a choices node the chosen option's `confidence` (docs/structured_outputs.md, "In workflows").
    logprobs: bool = False
    # Samples per call: n > 1 draws n samples of the same request (seeds seed, seed+1, ...; temperature > 0
    # required) and every result field becomes a list of n values, one per sample, in seed order.
    n: int = Field(default=1, ge=1, le=MAX_SAMPLES)
    sql: tuple[EmbeddedSql, ...] = ()
    http: tuple[EmbeddedHttp, ...] = ()

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @property
    def pure(self) -> bool:
        """Greedy, seeded sampling or scoring: the same request always yields the same result."""
        return self.temperature == 0.0 or self.seed is not None or self.scored

    @property
    def scored(self) -> bool:
        """A choices node that picks by scoring its options (choice_mode: score)."""
        return self.choice_mode == "score" and self.choices is not None

    @property
    def structured(self) -> tuple[str, ...]:
        """The structured-output fields this node sets (valid nodes set at most one)."""
        given = (("choices", self.choices), ("regex", self.regex), ("json_schema", self.json_schema))
        return tuple(name for name, value in given if value is not None)


class SqlNode(NodeBase, SqlCall):
    kind: Literal["sql"] = "sql"

    @property
    def pure(self) -> bool:
        return True  # validation admits read-only statements only


class HttpNode(NodeBase, HttpCall):
    kind: Literal["http"] = "http"

    @property
    def pure(self) -> bool:
        return self.method in ("GET", "HEAD")


class PythonNode(NodeBase):
    kind: Literal["python"] = "python"
    function: str  # "package.module:function", or a name registered with the workflow
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)
    pure: bool = False  # only a callable declared pure may be executed once for equal arguments
    cpu_bound: bool = False  # runs in a process pool instead of the tool threads
    timeout_s: float = Field(default=60.0, gt=0, le=3600)


class ReduceNode(NodeBase):
    """Combines a list without a model: `python` (a registered name or "package.module:function") is
    called with the value of `input`, one expression that must give a list (e.g. `{{ answers.output }}`
    of a foreach node). Its return value is the node's `output`."""

    kind: Literal["reduce"] = "reduce"
    input: str
    python: str
    pure: bool = True  # a reducer is a function of its list; say false for one that is not
    cpu_bound: bool = False
    timeout_s: float = Field(default=60.0, gt=0, le=3600)


class RuleNode(NodeBase):
    """Extraction without a model: a regex over `input`, or a field of `input` parsed as JSON."""

    kind: Literal["rule"] = "rule"
    input: str
    regex: str | None = None
    group: int | str = 0
    ignore_case: bool = False
    field: str | None = None
    default: Any = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_extractor(self) -> RuleNode:
        if (self.regex is None) == (self.field is None):
            raise ValueError("a rule node needs exactly one of 'regex' or 'field'")
        if self.regex is not None:
            compiled = re.compile(self.regex)
            if isinstance(self.group, int) and not 0 <= self.group <= compiled.groups:
                raise ValueError(f"regex has {compiled.groups} group(s); group {self.group} does not exist")
            if isinstance(self.group, str) and self.group not in compiled.groupindex:
                raise ValueError(f"regex has no group named '{self.group}'")
        return self

    @property
    def pure(self) -> bool:
        return True


NodeSpec = Annotated[LlmNode | SqlNode | HttpNode | PythonNode | RuleNode | ReduceNode, Field(discriminator="kind")]

NODE_TYPES: dict[str, type[LlmNode | SqlNode | HttpNode | PythonNode | RuleNode | ReduceNode]] = {
    "llm": LlmNode,
    "sql": SqlNode,
    "http": HttpNode,
    "python": PythonNode,
    "rule": RuleNode,
    "reduce": ReduceNode,
}

AnyNode = LlmNode | SqlNode | HttpNode | PythonNode | RuleNode | ReduceNode


def output_fields(spec: AnyNode) -> frozenset[str]:
    """The fields of this node's result that templates and `outputs:` may read."""
    fields = OUTPUT_FIELDS[spec.kind]
    if isinstance(spec, LlmNode):
        extra = {"json"} if spec.json_schema is not None else set()
        if spec.logprobs:
            extra.add("logprobs")
        if spec.choices is not None and (spec.logprobs or spec.scored):
            extra.add("confidence")
        if spec.scored:
            extra |= {"scores", "probabilities"}
        return fields | extra
    return fields
