"""The whole workflow document as declared: models, databases, inputs, nodes, loops, outputs."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from halo.spec.nodes import NodeId, NodeSpec, SpecModel

DEFAULT_MAX_ROWS = 10_000  # rows one sql node query may return (DatabaseSpec.max_rows)
# What one DuckDB database (its private instance) may take from the host, all its node queries together.
DEFAULT_MEMORY_LIMIT = "1GB"
DEFAULT_MAX_TEMP_DIRECTORY_SIZE = "4GB"  # spilled to disk beyond memory_limit, then out of memory
# Node queries get their parallelism from rows in flight on the tool pool, not from inside one query:
# one thread means a database never starts worker threads of its own, so DuckDB uses at most one core
# per tool thread and never takes every core from the engine.
DEFAULT_DUCKDB_THREADS = 1
# A size as DuckDB reads one: a positive number and a unit (1000- or 1024-based); no "unlimited".
_SIZE = re.compile(r"\s*(\d+(\.\d+)?)\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*", re.IGNORECASE)
_DUCKDB_ONLY = ("memory_limit", "threads", "max_temp_directory_size")


REMOTE_SOURCE = "openai"  # `source: openai`: an OpenAI-compatible endpoint serves the model (no local engine)
DEFAULT_REMOTE_CONCURRENCY = 16  # requests in flight to one endpoint when `max_concurrency` is not given
DEFAULT_REMOTE_TIMEOUT_S = 120.0
DEFAULT_REMOTE_ATTEMPTS = 5  # tries per request on connection errors, 429 and 5xx (the first included)
_REMOTE_ONLY = ("base_url", "model", "api_key_env", "api", "timeout_s", "max_attempts", "retry_backoff_s")


def remote_source(name: str) -> str:
    """The model source llm nodes of the declared remote model `name` run (`WorkflowGraph.model_source`)."""
    return f"{REMOTE_SOURCE}:{name}"


class ModelSpec(SpecModel):
    """A model the workflow may use: a registered name, a local .gguf file or an HF directory; or, with
    `source: openai`, a model an OpenAI-compatible server runs (`base_url`, `model`, docs/workflow_language.md)."""

    source: str
    # How this model's engine computes and stores its weights; None takes the run's setting (`halo run
    # --dtype/--weights`, `halo.compile(dtype=, engine_options=)`, both `auto` by default). The names
    # are the engine's (halo.engine.weight_formats; a test keeps the two lists equal).
    dtype: Literal["auto", "bf16", "fp32"] | None = None
    weights: Literal["auto", "bf16", "fp32", "int8", "int4"] | None = None

    # source: openai only -- the endpoint (`http(s)://host:port/v1`), the model name it serves, the
    # environment variable holding the API key (sent as a Bearer token; None: no key), which API (chat
    # completions, or legacy completions of the rendered prompt text), requests in flight at once, the
    # seconds one request may take, tries per request and the first retry's backoff (doubling after).
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    api: Literal["chat", "completions"] = "chat"
    max_concurrency: int = Field(default=DEFAULT_REMOTE_CONCURRENCY, ge=1, le=4096)
    timeout_s: float = Field(default=DEFAULT_REMOTE_TIMEOUT_S, gt=0)
    max_attempts: int = Field(default=DEFAULT_REMOTE_ATTEMPTS, ge=1, le=20)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    # The tokenizer the planner counts prompt tokens with (a registered name or a path); None: an
    # estimate of one token per 4 UTF-8 bytes. Remote models only; a local model counts with its own.
    tokenizer: str | None = None

    @property
    def remote(self) -> bool:
        return self.source == REMOTE_SOURCE

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(
                f"{value!r} is not an endpoint URL: give http(s)://host[:port]/path, e.g. http://host:8000/v1"
            )
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"{value!r} has an invalid port") from None
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _remote_fields(self) -> ModelSpec:
        if self.remote:
            missing = [name for name in ("base_url", "model") if not getattr(self, name)]
            if missing:
                raise ValueError(f"a source: openai model needs {' and '.join(map(repr, missing))}")
            if self.dtype is not None or self.weights is not None:
                raise ValueError("'dtype' and 'weights' are for local models (the remote server picks its own)")
            return self
        # Compared with the defaults, not model_fields_set: a dumped and re-validated spec sets every field.
        fields = type(self).model_fields
        given = [
            name
            for name in (*_REMOTE_ONLY, "max_concurrency", "tokenizer")
            if getattr(self, name) != fields[name].default
        ]
        if given:
            raise ValueError(f"{', '.join(map(repr, given))} is for source: openai models only")
        return self

    def engine_settings(self) -> dict[str, str]:
        """The engine options this declaration sets (those it leaves to the run are absent)."""
        return {key: value for key, value in (("dtype", self.dtype), ("weights", self.weights)) if value is not None}


class DatabaseSpec(SpecModel):
    """A database sql nodes query. Node queries are sandboxed: read-only, no files, no network.

    DuckDB runs a node's query with external access disabled and its configuration locked, so
    `read_csv`, `read_text`, `glob`, `COPY`, `ATTACH`, `INSTALL`/`LOAD`... reach no file, URL or
    extension, whatever a row's parameters say. The workflow's author is trusted like code: `init`
    runs before the lock and may read files beside the workflow. Every query is bounded in time
    (`timeout_s`), a DuckDB instance in memory, spill and threads (docs/security/sql.md).
    """

    kind: Literal["duckdb", "postgres"] = "duckdb"
    path: str | None = None  # duckdb file, opened read-only; None is an in-memory database
    dsn: str | None = None  # postgres connection string; its role decides what a SELECT can reach
    # duckdb only: a SQL script (path relative to the workflow file) run when the database is opened,
    # before any node's query, e.g. `CREATE TABLE vendors AS FROM read_csv('vendors.csv')` to seed an
    # in-memory database from files shipped beside the workflow. Node queries stay read-only.
    init: str | None = None
    # duckdb only, opt-in: directories (relative to the workflow file) node queries may read files
    # under, e.g. `read_csv('docs/' || :name)`. Nothing outside them, `..` and symlinks out included.
    allowed_directories: tuple[str, ...] = ()
    # The most rows one node query may return; a query returning more fails its row (add a LIMIT).
    max_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=1)
    # Seconds one node query (or EXPLAIN) may run before it is cancelled and fails its row; None is the
    # tool's statement_timeout_s (60 s by default). PostgreSQL's statement_timeout, a timer on DuckDB.
    timeout_s: float | None = Field(default=None, gt=0)
    # duckdb only: bounds on the database's instance, shared by its queries. Beyond memory_limit DuckDB
    # spills to a private folder, up to max_temp_directory_size; past both a query fails out of memory.
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    max_temp_directory_size: str = DEFAULT_MAX_TEMP_DIRECTORY_SIZE
    threads: int = Field(default=DEFAULT_DUCKDB_THREADS, ge=1)

    @field_validator("memory_limit", "max_temp_directory_size")
    @classmethod
    def _size(cls, value: str) -> str:
        match = _SIZE.fullmatch(value)
        if match is None or float(match.group(1)) <= 0:
            raise ValueError(f"{value!r} is not a size: a positive number and a unit, e.g. '512MB' or '2GiB'")
        return value.strip()

    @model_validator(mode="after")
    def _target(self) -> DatabaseSpec:
        if self.kind == "postgres" and not self.dsn:
            raise ValueError("a postgres database needs a 'dsn'")
        if self.kind == "duckdb" and self.dsn is not None:
            raise ValueError("a duckdb database takes 'path', not 'dsn'")
        if self.kind == "postgres" and self.init is not None:
            raise ValueError("'init' scripts are for duckdb databases only")
        if self.kind == "postgres" and self.allowed_directories:
            raise ValueError("'allowed_directories' is for duckdb databases only (a postgres role decides its own)")
        # Compared with the defaults, not model_fields_set: a dumped and re-validated spec sets every field.
        given = [name for name in _DUCKDB_ONLY if getattr(self, name) != type(self).model_fields[name].default]
        if self.kind == "postgres" and given:
            raise ValueError(f"{', '.join(map(repr, given))} is for duckdb databases only (the server sets its own)")
        return self


class LoopSpec(SpecModel):
    """A bounded loop: `nodes` (in body order) repeat up to `max_iterations` times, until `until`.

    `until` is a Jinja expression read after each iteration; once true, later iterations are skipped.
    Inside the body, a reference to a member listed earlier reads the same iteration; a reference to
    the node itself or a later member reads the previous iteration (unbound in iteration 1).
    """

    nodes: tuple[NodeId, ...] = Field(min_length=1)
    max_iterations: int = Field(ge=1, le=100)
    until: str | None = None


class WorkflowHeader(SpecModel):
    """Everything in a workflow document except its nodes."""

    name: str = Field(min_length=1)
    description: str | None = None
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    databases: dict[str, DatabaseSpec] = Field(default_factory=dict)
    inputs: tuple[NodeId, ...] = ()
    loops: tuple[LoopSpec, ...] = ()
    # name -> "node.field[.key...]" or an input; or a list of those: the first whose value is not null
    # (a router's output: whichever of its conditional branches ran)
    outputs: dict[str, str | tuple[str, ...]] = Field(default_factory=dict)


class WorkflowSpec(WorkflowHeader):
    """A validated workflow document; equal documents (from YAML or the builder) compare equal."""

    nodes: tuple[NodeSpec, ...] = Field(min_length=1)
