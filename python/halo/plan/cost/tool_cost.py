"""Predicted seconds per tool call (sql, http, python, rule), learned from the calls a run makes.

* **sql** — the database's own EXPLAIN estimate (PostgreSQL cost units; DuckDB estimated rows summed
  over operators) times a per-database factor: `seconds = overhead_s + seconds_per_unit × units`,
  a least-squares fit over exponentially decayed sums of observed (units, seconds), so it follows
  drift. The EXPLAIN itself is injected (`explain(db, query, params) -> units`): the plan stage does
  not open databases; the runtime's ToolRunner binds its own.
* **http / python** (and sql before its fit exists) — an exponentially weighted moving average of
  observed seconds per *signature*: http = method + host + path with ids and numbers normalized
  (`GET api.x.com/users/{id}`), python = the function, sql = database + whitespace-normalized query.
* Then the node's `expected_latency_s`, then `DEFAULT_LATENCY_S` for its kind.

Thread-safe: the runtime observes from its tool threads while the planner estimates.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from halo.plan.signature import freeze

ExplainFn = Callable[[str | None, str, Mapping[str, Any]], float]

DEFAULT_LATENCY_S: dict[str, float] = {
    "sql": 0.005,  # an indexed lookup or a scan of a small table on a local database
    "http": 0.2,  # a round trip to a service on the internet
    "python": 0.001,  # a small pure-Python function
    "rule": 1e-5,  # one regex search or JSON field read
    "reduce": 0.001,  # a python function over a list
}
"""Seconds assumed for a call of a kind never observed, when the node gives no expected_latency_s."""

MEMORY_DB = "<memory>"  # the key of the anonymous in-memory DuckDB (`db: null`) in fits and signatures
_EXPLAIN_MEMO_SIZE = 10_000
# A path segment that is an id as a whole: a number, a UUID, a hex digest, a long token with digits,
# or a template expression (`{{ user_id }}`, before rendering).
_ID_SEGMENT = re.compile(
    r"\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{8,}"
    r"|(?=[A-Za-z_-]*\d)[A-Za-z0-9_-]{16,}|\{\{.*?\}\}"
)
_INLINE_ID = re.compile(r"\{\{.*?\}\}|\d+")  # numbers and templates inside other segments: `order-12.json`


@dataclass
class Ewma:
    """Exponentially weighted moving average; the first observation is taken as is."""

    value: float = 0.0
    count: int = 0

    def update(self, seconds: float, alpha: float) -> None:
        self.value = seconds if self.count == 0 else alpha * seconds + (1 - alpha) * self.value
        self.count += 1


@dataclass
class UnitFit:
    """`seconds = overhead_s + seconds_per_unit × units`, fit by least squares over decayed sums."""

    weight: float = 0.0
    sum_u: float = 0.0
    sum_s: float = 0.0
    sum_uu: float = 0.0
    sum_us: float = 0.0
    count: int = 0

    def add(self, units: float, seconds: float, decay: float) -> None:
        self.weight = decay * self.weight + 1.0
        self.sum_u = decay * self.sum_u + units
        self.sum_s = decay * self.sum_s + seconds
        self.sum_uu = decay * self.sum_uu + units * units
        self.sum_us = decay * self.sum_us + units * seconds
        self.count += 1

    def coefficients(self) -> tuple[float, float]:
        """(overhead_s, seconds_per_unit), both kept non-negative."""
        if self.weight == 0.0:
            return 0.0, 0.0
        mean_u, mean_s = self.sum_u / self.weight, self.sum_s / self.weight
        variance = self.sum_uu / self.weight - mean_u * mean_u
        if variance > 1e-12 * max(1.0, mean_u * mean_u):
            slope = (self.sum_us / self.weight - mean_u * mean_s) / variance
            overhead = mean_s - slope * mean_u
            if slope >= 0.0 and overhead >= 0.0:
                return overhead, slope
            if slope < 0.0:  # bigger plans never run faster: no unit signal, keep the mean
                return mean_s, 0.0
        # One plan size seen (or a negative intercept): the best line through the origin.
        return (0.0, self.sum_us / self.sum_uu) if self.sum_uu > 0.0 else (mean_s, 0.0)

    def predict(self, units: float) -> float:
        overhead, slope = self.coefficients()
        return overhead + slope * units


class ToolCostModel:
    """Seconds per tool call: `estimate_s` for the planner, `observe` from the runtime, JSON on disk."""

    def __init__(self, explain: ExplainFn | None = None, *, alpha: float = 0.3, fit_decay: float = 0.98) -> None:
        self.explain = explain  # the runtime's ToolRunner binds its own when this is None
        self.alpha = alpha
        self.fit_decay = fit_decay
        self._latency: dict[str, Ewma] = {}
        self._fits: dict[str, UnitFit] = {}
        self._units: dict[Any, float] = {}  # memo of EXPLAIN results, by (db, query, params)
        self._lock = threading.Lock()

    # -- the protocol ---------------------------------------------------------------------------

    def estimate_s(self, node: Any, request: Mapping[str, Any] | None = None) -> float:
        """Predicted seconds of one call of `node` (a GraphNode or a node spec), `request` rendered or None."""
        spec = getattr(node, "spec", node)
        kind = _tool_kind(spec)
        if kind == "sql" and request is not None:
            units = self._explain_units(request)
            with self._lock:
                fit = self._fits.get(_db_key(request.get("db")))
                if units is not None and fit is not None and fit.count > 0:
                    return fit.predict(units)
        signature = self.signature(spec, request)
        with self._lock:
            seen = self._latency.get(signature)
            if seen is not None:
                return seen.value
        if spec.expected_latency_s is not None:
            return float(spec.expected_latency_s)
        return DEFAULT_LATENCY_S[kind]

    def observe(self, node: Any, request: Mapping[str, Any] | None, seconds: float) -> None:
        """Record that one call of `node` with `request` took `seconds`."""
        spec = getattr(node, "spec", node)
        kind = _tool_kind(spec)
        units = self._explain_units(request) if kind == "sql" and request is not None else None
        signature = self.signature(spec, request)
        with self._lock:
            self._latency.setdefault(signature, Ewma()).update(seconds, self.alpha)
            if units is not None and request is not None:
                self._fits.setdefault(_db_key(request.get("db")), UnitFit()).add(units, seconds, self.fit_decay)

    def signature(self, node: Any, request: Mapping[str, Any] | None = None) -> str:
        """The key calls share a latency average under (see the module docstring)."""
        spec = getattr(node, "spec", node)
        kind = _tool_kind(spec)
        fields: Mapping[str, Any] = request if request is not None else {}
        if kind == "sql":
            query = str(fields.get("query", spec.query))
            return f"sql {_db_key(fields.get('db', spec.db))} {' '.join(query.split())}"
        if kind == "http":
            return http_signature(str(fields.get("method", spec.method)), str(fields.get("url", spec.url)))
        if kind == "python":
            return f"python {fields.get('function', spec.function)}"
        if kind == "reduce":
            return f"python {fields.get('python', spec.python)}"
        return "rule"

    def seconds_per_unit(self, db: str | None) -> tuple[float, float] | None:
        """The fitted (overhead_s, seconds_per_unit) of a database, None before any observation."""
        with self._lock:
            fit = self._fits.get(_db_key(db))
            return fit.coefficients() if fit is not None and fit.count > 0 else None

    # -- persistence ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": 1,
                "alpha": self.alpha,
                "fit_decay": self.fit_decay,
                "latency": {key: asdict(value) for key, value in self._latency.items()},
                "sql_fits": {key: asdict(value) for key, value in self._fits.items()},
            }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], explain: ExplainFn | None = None) -> ToolCostModel:
        model = cls(explain, alpha=float(data.get("alpha", 0.3)), fit_decay=float(data.get("fit_decay", 0.98)))
        model._latency = {key: Ewma(**value) for key, value in data.get("latency", {}).items()}
        model._fits = {key: UnitFit(**value) for key, value in data.get("sql_fits", {}).items()}
        return model

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(target.suffix + ".tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        temporary.replace(target)  # readers never see half a file
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], explain: ExplainFn | None = None) -> ToolCostModel:
        return cls.from_dict(json.loads(Path(path).read_text()), explain)

    # -- helpers --------------------------------------------------------------------------------

    def _explain_units(self, request: Mapping[str, Any]) -> float | None:
        explain = self.explain
        if explain is None:
            return None
        params = dict(request.get("params") or {})
        key = (request.get("db"), str(request["query"]), freeze(params))
        with self._lock:
            units = self._units.get(key)
        if units is not None:
            return units
        try:
            units = float(explain(request.get("db"), str(request["query"]), params))
        except Exception:
            return None  # no estimate from the database: the latency average stands in
        with self._lock:
            if len(self._units) >= _EXPLAIN_MEMO_SIZE:
                self._units.pop(next(iter(self._units)))  # oldest first: dicts keep insertion order
            self._units[key] = units
        return units


def http_signature(method: str, url: str) -> str:
    """`GET host/path` with ids, numbers and template expressions in path segments replaced by `{id}`."""
    parts = urlsplit(url)
    host = parts.hostname or parts.netloc
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    segments = [
        "{id}" if _ID_SEGMENT.fullmatch(segment) else _INLINE_ID.sub("{id}", segment)
        for segment in parts.path.split("/")
    ]
    return f"{method.upper()} {host}{'/'.join(segments)}"


def _tool_kind(spec: Any) -> str:
    kind = getattr(spec, "kind", None)
    if kind not in DEFAULT_LATENCY_S:
        raise ValueError(f"ToolCostModel prices tool calls (sql, http, python, rule, reduce), not '{kind}' nodes")
    return str(kind)


def _db_key(db: str | None) -> str:
    return MEMORY_DB if db is None else str(db)
