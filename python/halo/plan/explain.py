"""EXPLAIN for a consolidated batch: one line per graph node, then totals and prefix sharing.

Reads like a database plan: nodes in execution (topological) order, each with what it waits for,
how many instances the batch asks for and how many executions remain after merging. With the plan's
estimates (`node_figures.NodeEstimate`) the same lines carry its predicted prompt and generated
tokens and seconds; with a run's actuals (EXPLAIN ANALYZE) they also carry what the run measured,
side by side, as PostgreSQL's EXPLAIN ANALYZE puts `(actual ...)` after `(cost ...)`.
"""

from __future__ import annotations

from collections.abc import Mapping

from halo.plan.consolidated_graph import ConsolidatedGraph, NodeCounters
from halo.plan.node_figures import NodeActual, NodeEstimate

ESTIMATE_COLUMNS = ("est prompt", "est decode", "est s")
ACTUAL_COLUMNS = ("ran", "hits", "prompt", "computed", "cached", "decode", "time s", "busy s", "skipped", "failed")


def explain_text(
    graph: ConsolidatedGraph,
    estimates: Mapping[str, NodeEstimate] | None = None,
    actuals: Mapping[str, NodeActual] | None = None,
) -> str:
    """Render `graph` as an EXPLAIN-style table (per node: instances, executions, prompt tokens), with
    the plan's `estimates` and a run's `actuals` as more columns of the same lines when given."""
    wf = graph.workflow
    lines = [
        f"CONSOLIDATED PLAN  {wf.spec.name}  rows={graph.rows}  graph nodes={len(wf.nodes)}"
        f"  calls: logical={graph.logical_calls} physical={graph.physical_calls}"
        f" ({_saved(graph.logical_calls, graph.physical_calls)} saved)",
    ]
    header = (
        "node",
        "kind",
        "model/db",
        "instances",
        "executions",
        "saved",
        "prompt tok",
        "unique",
        "shared prefix",
        *(ESTIMATE_COLUMNS if estimates is not None else ()),
        *(ACTUAL_COLUMNS if actuals is not None else ()),
        "waits for",
    )
    table = [header]
    for node in wf.nodes:
        c = graph.counters[node.id]
        waits = ", ".join(b.name if len(b.candidates) == 1 else f"{b.name}(last)" for b in node.bindings)
        if node.after:
            waits = ", ".join(filter(None, [waits, "after " + ", ".join(node.after)]))
        table.append(
            (
                node.id + ("" if node.pure else " *"),
                c.kind,
                _target(c, node.spec),
                str(c.logical),
                str(c.physical),
                _saved(c.logical, c.physical),
                *_tokens(c),
                *(_estimate(estimates[node.id]) if estimates is not None else ()),
                *(_actual(actuals.get(node.id)) if actuals is not None else ()),
                waits or "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = set(range(3, len(header) - 1))
    for row in table:
        cells = [
            cell.rjust(w) if i in numeric and row is not header else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    if any(not n.pure for n in wf.nodes):
        lines.append("  * impure (sampled llm, non-GET http, python not marked pure): runs once per row")
    lines.extend(_foreach_lines(graph))
    for model, p in graph.prefixes.items():
        largest = p.groups[0] if p.groups else None
        lines.append(
            f"PREFIXES  {model}: {p.requests} rendered requests, prompt tokens logical={p.logical_tokens}"
            f" after-merge={p.physical_tokens} unique={p.unique_tokens}"
            f" ({_saved(p.logical_tokens, p.unique_tokens)} saved); {len(p.groups)} prefix groups"
            + (f", largest: {len(largest.members)} requests share {largest.tokens} tokens" if largest else "")
            + (f"; {p.deferred_requests} requests rendered at run time" if p.deferred_requests else "")
        )
    if graph.tokenizer_name is None:
        lines.append("PREFIXES  not computed (no tokenizer given)")
    failed = graph.failed_rows()
    if failed:
        first = min(failed)
        lines.append(
            f"FAILED ROWS  {len(failed)} row(s) fail to render and will end with an error (first: row {first}:"
            f" {failed[first]})"
        )
    return "\n".join(lines)


def _foreach_lines(graph: ConsolidatedGraph) -> list[str]:
    """One line per foreach node: its per-element instances, or where its list comes from."""
    lines = []
    for node in graph.workflow.nodes:
        if node.spec.foreach is None:
            continue
        e = graph.counters[node.id].elements
        if e is None:
            reads = ", ".join(dict.fromkeys(c for b in node.bindings for c in b.candidates)) or "a loop guard"
            lines.append(
                f"FOREACH  {node.id}: maps over a list that reads {reads}; its elements are known at run time"
                " (explain --analyze counts the calls)"
            )
            continue
        extra = "".join(
            f", {count} instance(s) {what}"
            for count, what in ((e.skipped, "skipped by when"), (e.failed, "fail"))
            if count
        )
        lines.append(
            f"FOREACH  {node.id}: {e.instances} instances map {e.elements} elements (at most {e.largest} in one)"
            f" -> {e.distinct} distinct element calls ({_saved(e.elements, e.distinct)} saved){extra}"
        )
    return lines


def _saved(logical: int, physical: int) -> str:
    return f"{100.0 * (logical - physical) / logical:.0f}%" if logical else "-"


def _target(c: NodeCounters, spec: object) -> str:
    if c.model is not None:
        return c.model
    return str(getattr(spec, "db", None) or getattr(spec, "method", None) or "-")


def _estimate(e: NodeEstimate) -> tuple[str, ...]:
    def tokens(n: int | None) -> str:
        return "-" if n is None else str(n)

    return tokens(e.prompt_tokens), tokens(e.decode_tokens), f"{e.seconds:.3f}"


def _actual(a: NodeActual | None) -> tuple[str, ...]:
    if a is None:
        return ("-",) * len(ACTUAL_COLUMNS)
    span = "-" if a.start_s is None or a.end_s is None else f"{a.start_s:.3f}..{a.end_s:.3f}"
    counts = (a.executed, a.hits, a.prompt_tokens, a.computed_tokens, a.cached_tokens, a.decode_tokens)
    return (*map(str, counts), span, f"{a.busy_s:.3f}", str(a.skipped), str(a.failed))


def _tokens(c: NodeCounters) -> tuple[str, str, str]:
    if c.kind != "llm":
        return "-", "-", "-"
    if c.deferred:
        head = "-" if c.static_prefix_tokens is None else f">={c.static_prefix_tokens}"
        return "run time", "run time", head
    unique = c.physical_prompt_tokens - c.cached_prompt_tokens
    return str(c.prompt_tokens), str(unique), str(c.cached_prompt_tokens)


def explain_dot(graph: ConsolidatedGraph) -> str:
    """The consolidated plan as a Graphviz digraph: one box per graph node, labelled with its kind,
    instances -> executions and (for llm nodes) prompt tokens; edges are data reads (dashed:
    run-after and loop guards). Render with `dot -Tpng`."""
    wf = graph.workflow
    lines = [
        f'digraph "{_quote(wf.spec.name)}" {{',
        "  rankdir=TB;",
        '  node [shape=box, fontname="monospace"];',
    ]
    for node in wf.nodes:
        c = graph.counters[node.id]
        label = f"{node.id}\\n{c.kind}{' ' + c.model if c.model else ''}\\n{c.logical} -> {c.physical} runs"
        tokens = _tokens(c)
        if c.kind == "llm" and not c.deferred:
            label += f"\\nprompt tok {tokens[0]}, unique {tokens[1]}"
        style = "" if node.pure else ", style=dashed"
        lines.append(f'  "{_quote(node.id)}" [label="{_quote(label)}"{style}];')
        for binding in node.bindings:
            for candidate in binding.candidates:
                lines.append(f'  "{_quote(candidate)}" -> "{_quote(node.id)}";')
        waits = list(node.after) + [c for g in node.guards for b in g.bindings for c in b.candidates]
        for upstream in dict.fromkeys(waits):
            lines.append(f'  "{_quote(upstream)}" -> "{_quote(node.id)}" [style=dashed];')
    lines.append("}")
    return "\n".join(lines)


def _quote(text: str) -> str:
    return text.replace('"', '\\"')
