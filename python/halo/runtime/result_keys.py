"""Keys of the persistent result cache: a SHA-256 over the canonical request of one node instance.

A key names what the call would compute, never the row that asked for it:

* llm: the model's identity (its files, as the checkpoint cache identifies them: resolved path, size,
  mtime and a hash of each file's head; the engine's compute dtype and weight format; a fingerprint of
  the engine code and Halo's version), the rendered chat messages and every sampling parameter (max
  tokens, temperature, top-p, seed, stop, output format, logprobs, choice mode, n). Only pure nodes:
  greedy, seeded or scored (`LlmNode.pure`); an unseeded sampled call must sample anew.
* sql: the database's identity (a DuckDB file by its content hash, computed once per run, with its
  size, mtime and inode; an init script by its text and the files its string literals name; the
  files under `allowed_directories` by name, size and mtime; PostgreSQL by its DSN without the
  password) + the statement + its bound parameters. A statement calling a volatile function
  (`random()`, `now()`, `current_date`, `nextval`...) is not cached.
* http: GET and HEAD only (`HttpNode.pure`): method, URL, params, headers, body and the response bounds.
* python: only nodes declared `pure: true`: the function's name, its module file's hash, its closure
  and defaults (a closure that cannot be written exactly is not cached) + args and kwargs.

A node with `cache: false`, a rule node (microseconds; not worth a lookup) and a request holding a
value the exact codec refuses get no key (None): they always run. A key is over `cached_values.encode`
of the payload, which keeps types (1, 1.0 and True are different requests, as in `signature.freeze`).

Identities of files and databases are memoised per `ResultKeys`, and the Processor gets one per run:
a file is hashed at most once per run, and a file changed between runs is hashed again.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import inspect
import marshal
import os
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from halo.engine import LLMEngine, SamplingParams
from halo.engine.batch_invariant import DETERMINISTIC_DEFAULT
from halo.engine.checkpoint_cache import code_fingerprint, source_identity
from halo.engine.dtype_probe import choose_dtype
from halo.engine.model_source import resolve_model_path
from halo.runtime.cached_values import Uncacheable, encode
from halo.runtime.llm_worker import EngineRecipe
from halo.runtime.tools.python_call import resolve_function
from halo.spec.document import DatabaseSpec
from halo.spec.graph import GraphNode
from halo.spec.sql_statement import lex
from halo.spec.workflow import Workflow

KEY_FORMAT = 1  # bump when what a key covers changes: every older entry becomes a miss
MAX_LISTED_FILES = 10_000  # files under a DuckDB database's allowed_directories; beyond: not cached
_HASH_CHUNK = 1 << 20

# Functions whose value changes from call to call: a statement naming one is never cached.
VOLATILE_SQL = frozenset(
    {
        "RANDOM", "SETSEED", "UUID", "GEN_RANDOM_UUID", "UUIDV4", "UUIDV7", "NOW", "TODAY", "CURRENT_DATE",
        "CURRENT_TIME", "CURRENT_TIMESTAMP", "LOCALTIME", "LOCALTIMESTAMP", "CURRENT_LOCALTIME",
        "CURRENT_LOCALTIMESTAMP", "GET_CURRENT_TIME", "GET_CURRENT_TIMESTAMP", "TRANSACTION_TIMESTAMP",
        "STATEMENT_TIMESTAMP", "CLOCK_TIMESTAMP", "TIMEOFDAY", "NEXTVAL", "CURRVAL", "LASTVAL",
    }
)  # fmt: skip

# The code whose edits change what an llm request returns, beyond the checkpoint loader's (code_fingerprint).
_ENGINE_CODE = ("halo.engine", "halo.output_grammar", "halo.plan.prompt_tokens", "halo.runtime.node_io")
_TOOL_CODE = ("halo.runtime.tools",)


def model_identity(path: str | os.PathLike[str], dtype: str, weights: str, deterministic: bool) -> dict[str, Any]:
    """What an llm node's answers depend on besides its request: the model files, as loaded (dtype and
    weight format), whether the engine is batch-invariant (its bf16 answers round otherwise), and the
    engine's code."""
    return {"source": source_identity(Path(path)), "dtype": dtype, "weights": weights,
            "deterministic": deterministic, "code": engine_fingerprint()}


@cache
def engine_fingerprint() -> str:
    """Halo's version, the checkpoint loader's fingerprint, the engine code and the native core's file."""
    return _code_digest(_ENGINE_CODE, extra=(code_fingerprint(), _file_stamp("halo._core")))


@cache
def tool_fingerprint() -> str:
    """Halo's version (in the loader fingerprint) and the tool code, which shapes every tool result."""
    return _code_digest(_TOOL_CODE, extra=(code_fingerprint(),))


class ResultKeys:
    """The cache keys of one run's requests; `models` maps each llm model source to `model_identity`."""

    def __init__(self, workflow: Workflow, models: Mapping[str, Mapping[str, Any]]) -> None:
        self.workflow = workflow
        self.models = dict(models)
        self._files: dict[tuple[str, int, int, int], str] = {}  # (path, size, mtime_ns, inode) -> sha256
        self._databases: dict[str | None, Any] = {}
        self._functions: dict[str, Any] = {}
        self._volatile: dict[str, bool] = {}

    def llm(self, node: GraphNode, messages: Sequence[Mapping[str, str]], params: SamplingParams, n: int) -> str | None:
        """The key of an llm request, or None when it must run (impure, `cache: false`, unknown model)."""
        if not _cacheable(node):
            return None
        model = self.models.get(self.workflow.graph.model_source(node) or "")
        if model is None:
            return None
        return _digest({"kind": "llm", "model": model, "messages": list(messages), "params": _params(params), "n": n})

    def tool(self, node: GraphNode, request: Mapping[str, Any]) -> str | None:
        """The key of a sql, http, python or reduce request, or None when it must run."""
        if not _cacheable(node) or node.kind not in ("sql", "http", "python", "reduce"):
            return None
        target: Any = None
        if node.kind == "sql":
            if self._is_volatile(str(request.get("query", ""))):
                return None
            target = self._database(request.get("db"))
        elif node.kind == "python":
            target = self._function(str(request.get("function", "")))
        elif node.kind == "reduce":  # a python call of its input list
            target = self._function(str(request.get("python", "")))
        if node.kind != "http" and target is None:
            return None
        return _digest({"kind": node.kind, "target": target, "request": dict(request), "code": tool_fingerprint()})

    # -- identities -----------------------------------------------------------------------------------

    def _database(self, db: str | None) -> Any:
        if db not in self._databases:
            spec = self.workflow.spec.databases.get(db) if db is not None else DatabaseSpec()
            self._databases[db] = None if spec is None else self._database_identity(spec)
        return self._databases[db]

    def _database_identity(self, spec: DatabaseSpec) -> Any:
        described = spec.model_dump(mode="json", exclude={"dsn"})
        if spec.kind == "postgres":
            assert spec.dsn is not None
            dsn = _dsn_without_password(spec.dsn)
            return None if dsn is None else {"spec": described, "dsn": dsn}
        base = self.workflow.base_dir
        identity: dict[str, Any] = {"spec": described}
        if spec.path is not None:
            file = base / spec.path
            identity["file"] = self._file(file)
            wal = file.with_name(file.name + ".wal")  # DuckDB's own log of changes not checkpointed yet
            identity["wal"] = self._file(wal) if wal.exists() else None
            if identity["file"] is None:
                return None
        if spec.init is not None:
            script = base / spec.init
            identity["init"] = self._file(script)
            identity["init_reads"] = self._init_reads(script)
            if identity["init"] is None:
                return None
        listed = [_listing(base / directory) for directory in spec.allowed_directories]
        if any(listing is None for listing in listed):
            return None
        identity["allowed"] = listed
        return identity

    def _init_reads(self, script: Path) -> list[Any]:
        """The files an init script names in its string literals (relative to the workflow), globs
        expanded: `read_csv('vendors.csv')` reads vendors.csv, so its content is part of the database."""
        try:
            text = script.read_text()
        except OSError:
            return []
        base = self.workflow.base_dir
        found = []
        for literal in re.findall(r"'((?:[^']|'')*)'", text):
            name = literal.replace("''", "'")
            if not name or "\n" in name:
                continue
            pattern = name if os.path.isabs(name) else str(base / name)
            matches = sorted(glob.glob(pattern)) if glob.has_magic(name) else [pattern]
            for match in matches[:MAX_LISTED_FILES]:
                if os.path.isfile(match):
                    found.append([name, self._file(Path(match))])
        return found

    def _file(self, path: Path) -> list[Any] | None:
        """A file's identity: resolved path, size, mtime, inode and its SHA-256 (computed once per run)."""
        try:
            resolved = path.resolve()
            st = resolved.stat()
        except OSError:
            return None
        stamp = (str(resolved), st.st_size, st.st_mtime_ns, st.st_ino)
        if stamp not in self._files:
            try:
                self._files[stamp] = _sha256(resolved)
            except OSError:
                return None
        return [*stamp, self._files[stamp]]

    def _function(self, name: str) -> Any:
        if name not in self._functions:
            self._functions[name] = self._function_identity(name)
        return self._functions[name]

    def _function_identity(self, name: str) -> Any:
        try:
            function = resolve_function(name, self.workflow.functions)
        except LookupError:
            return None  # the call fails its row: nothing to cache
        module = getattr(function, "__module__", None)
        qualname = getattr(function, "__qualname__", None)
        if qualname is None:  # a callable object (a partial, an instance): its state is not covered
            return None
        try:
            source = inspect.getsourcefile(function)
        except TypeError:  # a builtin: its behaviour is the interpreter's
            source = None
        state = []
        for cell in getattr(function, "__closure__", None) or ():
            try:
                state.append(cell.cell_contents)
            except ValueError:  # an empty cell
                state.append(None)
        try:
            frozen = encode([state, getattr(function, "__defaults__", None), getattr(function, "__kwdefaults__", None)])
        except (Uncacheable, RecursionError):
            return None
        file = self._file(Path(source)) if source else None
        code = getattr(function, "__code__", None)  # covers a function defined where no file is (a notebook)
        compiled = hashlib.sha256(marshal.dumps(code)).hexdigest() if code is not None else None
        return {"name": name, "module": module, "qualname": qualname, "file": file, "code": compiled, "state": frozen}

    def _is_volatile(self, query: str) -> bool:
        if query not in self._volatile:
            words = {word for statement in lex(query).statements for word in statement}
            self._volatile[query] = bool(words & VOLATILE_SQL)
        return self._volatile[query]


def _cacheable(node: GraphNode) -> bool:
    return bool(getattr(node.spec, "cache", True)) and node.pure


def _params(params: SamplingParams) -> dict[str, Any]:
    return dataclasses.asdict(params)


def _digest(payload: Any) -> str | None:
    try:
        text = encode({"format": KEY_FORMAT, **payload})
    except (Uncacheable, RecursionError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _dsn_without_password(dsn: str) -> list[list[str]] | None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        fields = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - a DSN psycopg cannot parse fails every query: nothing to cache
        return None
    return sorted([str(k), str(v)] for k, v in fields.items() if k != "password")


def _listing(directory: Path) -> list[Any] | None:
    """(relative name, size, mtime_ns) of every file under `directory`, or None past MAX_LISTED_FILES."""
    root = directory.resolve()
    files: list[Any] = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                st = path.stat()
            except OSError:
                continue
            files.append([str(path.relative_to(root)), st.st_size, st.st_mtime_ns])
            if len(files) > MAX_LISTED_FILES:
                return None
    return [str(root), sorted(files)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _code_digest(packages: Sequence[str], extra: Sequence[str] = ()) -> str:
    """A hash of the source of these modules (every module of a package)."""
    digest = hashlib.sha256()
    for item in extra:
        digest.update(item.encode())
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            digest.update(f"{name} absent".encode())
            continue
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for file in files:
            digest.update(str(file.relative_to(origin.parent)).encode() + file.read_bytes())
    return digest.hexdigest()


def _file_stamp(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return f"{module} absent"
    st = os.stat(spec.origin)
    return f"{module} {st.st_size} {st.st_mtime_ns}"


def model_identities(
    sources: Sequence[str], recipe: EngineRecipe, local_engine: Callable[[str], LLMEngine] | None
) -> dict[str, dict[str, Any]]:
    """`model_identity` per model source: from the in-process engine that runs it (`local_engine`), or,
    for Ray workers (their engines live in the actors), from the recipe they build it with: the same
    file, the dtype `auto` resolves to on this machine and the weight format asked for."""
    identities = {}
    for source in sources:
        if local_engine is not None:
            engine = local_engine(source)
            identities[source] = model_identity(
                engine.model_path, engine.dtype_choice.name, engine.model.weight_format, engine.model.deterministic
            )
            continue
        options = recipe.options_for(source)
        path = resolve_model_path(recipe.models.get(source, source))
        dtype = choose_dtype(options.get("dtype", "auto")).name
        deterministic = bool(options.get("deterministic", DETERMINISTIC_DEFAULT))
        identities[source] = model_identity(path, dtype, str(options.get("weights", "auto")), deterministic)
    return identities
