"""OutputLengthHistory: how many tokens an llm node's calls actually generated, to price decode.

Before any observation a call is assumed to run to ``max_tokens``; afterwards the estimate is the
running mean of what calls under the same key generated (capped at ``max_tokens``). Keys name a node's
request shape, not a row: `output_key` hashes the model, system prompt, prompt template,
``max_tokens`` and the structured output (``choices``, ``regex``, ``json_schema``, ``choice_mode``),
so the same node of the same workflow shares its history across runs, and a node whose format
changes (a choices node's outputs are a few tokens) starts a history of its own. A node of ``n``
samples counts each sample as a call. The Processor
feeds ``observe``; ``build_plan_problem`` reads ``expected``. The same history keeps, under
`calls_key`, how many calls an instance of a conditional (`when`) or map (`foreach`) node made on
average (0 when skipped, one per element of a map): `expected_calls`, the planner's multiplier of that
node's work (1.0 for a conditional and `FOREACH_GUESS` elements for a map until observed).
Under `decode_key` it keeps, per node and speculative mode, what a decode step of the node's sequences
did when its engine drafted (engine/speculation.py): tokens it appended (1 + the drafts accepted on a
verify step, 1 on a plain one) and rows it computed (1 + the drafts verified), each a mean over decode
steps (`observe_decode`). `decode_rate` is what the planner divides a node's decode steps by and
multiplies its decode batch by (`PLAIN_DECODE`, 1 and 1, until observed; with speculation off the
planner never asks). Only runs whose engines had speculation on feed it (a node auto stopped drafting
for teaches 1 and 1), so plain decoding's figures never mix in.
Persisted as one small JSON file (``$HALO_CACHE_DIR/output_lengths.json``), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from halo.spec.graph import GraphNode


def history_path(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "output_lengths.json"
    env = os.environ.get("HALO_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "halo") / "output_lengths.json"


def output_key(node: GraphNode, model: str | None) -> str:
    """The history key of an llm node: its model, request template and output format, not its rows."""
    spec = node.spec
    parts: list[object] = [
        model,
        getattr(spec, "system", None),
        getattr(spec, "prompt", None),
        getattr(spec, "max_tokens", None),
    ]
    formats = {name: getattr(spec, name, None) for name in ("choices", "regex", "json_schema")}
    structured = {name: value for name, value in formats.items() if value is not None}
    if structured:  # free-text nodes keep the keys they had before formats existed
        parts.append({**structured, "choice_mode": getattr(spec, "choice_mode", "greedy")})
    text = json.dumps(parts, sort_keys=True)
    return f"{node.name}:{hashlib.sha1(text.encode()).hexdigest()[:12]}"


FOREACH_GUESS = 8
"""Elements a foreach node's instance is assumed to map over before any run was observed (at most its
`max_items`)."""


def calls_key(node: GraphNode, model: str | None) -> str:
    """The history key of a node's calls per instance: its output key and its `when`/`foreach`."""
    control = json.dumps([getattr(node.spec, "when", None), getattr(node.spec, "foreach", None)])
    return f"{output_key(node, model)}#calls:{hashlib.sha1(control.encode()).hexdigest()[:8]}"


def decode_key(node: GraphNode, model: str | None, speculative: str) -> str:
    """The history key of a node's decode rate when its engine runs speculative mode `speculative`."""
    return f"{output_key(node, model)}#decode:{speculative}"


@dataclass(frozen=True)
class DecodeRate:
    """Per decode step of a node's sequences: tokens appended and rows computed (verified drafts included)."""

    tokens_per_step: float = 1.0
    rows_per_step: float = 1.0


PLAIN_DECODE = DecodeRate()


@dataclass
class _Stat:
    count: int = 0
    mean: float = 0.0


@dataclass
class OutputLengthHistory:
    """Observed output lengths per key (running mean and count)."""

    path: Path | None = None  # where `save` writes; None: in memory only
    stats: dict[str, _Stat] = field(default_factory=dict)

    def observe(self, key: str, tokens: float, calls: int = 1) -> None:
        """Record that ``calls`` calls under ``key`` generated ``tokens`` tokens each on average."""
        if calls <= 0:
            return
        stat = self.stats.setdefault(key, _Stat())
        stat.mean += (tokens - stat.mean) * calls / (stat.count + calls)
        stat.count += calls

    def expected_calls(self, key: str, default: float) -> float:
        """Calls an instance under ``key`` is expected to make: the observed mean, else ``default``."""
        stat = self.stats.get(key)
        return default if stat is None or stat.count == 0 else max(0.0, stat.mean)

    def expected(self, key: str, max_tokens: int) -> int:
        """Tokens a call under ``key`` is expected to generate: the observed mean, else ``max_tokens``."""
        stat = self.stats.get(key)
        if stat is None or stat.count == 0:
            return max_tokens
        return max(1, min(max_tokens, round(stat.mean)))

    def observe_decode(self, key: str, tokens: int, steps: int, rows: int) -> None:
        """Record a run's decode of a node: ``tokens`` appended by decode steps (the first token of each
        call comes from its prefill), in ``steps`` steps that computed ``rows`` rows (each weighs a step)."""
        if steps <= 0 or tokens <= 0:
            return
        self.observe(f"{key}:tokens", tokens / steps, steps)
        self.observe(f"{key}:rows", rows / steps, steps)

    def decode_rate(self, key: str) -> DecodeRate:
        """The observed decode rate under ``key`` (`decode_key`), else `PLAIN_DECODE`."""
        tokens, rows = self.stats.get(f"{key}:tokens"), self.stats.get(f"{key}:rows")
        if tokens is None or rows is None or tokens.count == 0:
            return PLAIN_DECODE
        return DecodeRate(max(1.0, tokens.mean), max(1.0, rows.mean))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> OutputLengthHistory:
        """The history at ``path`` (default: under the halo cache dir); empty if there is none yet."""
        target = Path(path) if path is not None else history_path()
        stats: dict[str, _Stat] = {}
        if target.is_file():
            raw = json.loads(target.read_text())
            stats = {k: _Stat(int(v["count"]), float(v["mean"])) for k, v in raw.items()}
        return cls(target, stats)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        target = Path(path) if path is not None else self.path or history_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({k: {"count": s.count, "mean": s.mean} for k, s in sorted(self.stats.items())}))
        tmp.replace(target)  # readers never see a half-written file
        return target
