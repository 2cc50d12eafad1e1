"""Whole-workflow checks: ids, references, models, databases, SQL, loops, outputs and cycles.

Each check appends a `Problem` (document path, message, node) and goes on, so one pass reports
every error. Sections that failed their own validation are named in `broken` and the checks that
would read them are skipped, rather than reporting noise caused by the first error.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from halo.spec.catalog import DeclaredNode
from halo.spec.dependencies import declared_edges, find_cycles, loop_bodies, memberships
from halo.spec.document import WorkflowHeader
from halo.spec.node_checks import check_node
from halo.spec.nodes import ReduceNode, output_fields
from halo.spec.problem import Problem
from halo.spec.remote_checks import check_remote_nodes
from halo.spec.request_template import expression_source
from halo.spec.source_map import DocPath
from halo.spec.template import DYNAMIC_FIELD, Reference, expression_references, is_single_expression

ITERATION = "iteration"
"""The 1-based iteration number, readable by the templates of loop members and `until`."""

RESERVED = frozenset(
    {
        ITERATION,
        "loop",
        "self",
        "range",
        "dict",
        "lipsum",
        "cycler",
        "joiner",
        "namespace",
        "caller",
        "varargs",
        "kwargs",
        "true",
        "false",
        "none",
        "True",
        "False",
        "None",
    }
)


def check_workflow(
    header: WorkflowHeader,
    declared: Sequence[DeclaredNode],
    env: ImmutableSandboxedEnvironment,
    functions: Collection[str] = (),
    broken: Collection[str] = (),
    unchecked: Collection[str] = (),
) -> list[Problem]:
    """Every whole-workflow problem; `unchecked` are ids of nodes too broken to check (already
    reported), which references may name without further complaint."""
    out: list[Problem] = []
    by_id = _check_ids(header, declared, out)
    inputs = set(header.inputs)
    bodies = loop_bodies(header.loops, declared)
    members = memberships(bodies)
    for node in declared:
        out.extend(check_node(node, header, functions, broken))
        element = _check_control(node, inputs, by_id, out)
        for slot, references in node.slot_references:
            for ref in sorted(references):
                if element is not None and ref.name == element and slot != ("foreach",):
                    continue  # the element a foreach node is running for
                _check_reference(
                    ref, node.id, node.path + slot, inputs, by_id, node.id in members, broken, out, unchecked
                )
        for name in node.spec.after:
            if name not in by_id and name not in unchecked:
                out.append(Problem(node.path + ("after",), f"'after' names unknown node '{name}'", node.id))
            elif name == node.id:
                out.append(Problem(node.path + ("after",), "a node cannot run after itself", node.id))
    _check_model_paths(header, out)
    _check_model_settings(header, out)
    check_remote_nodes(header, declared, out)
    _check_loops(header, by_id, bodies, env, inputs, broken, out, unchecked)
    _check_outputs(header, by_id, inputs | set(unchecked), out)
    edges = declared_edges(declared, members)
    for loop, body in zip(header.loops, bodies, strict=True):
        # Iterations after the first wait for what `until` reads outside the loop.
        if loop.until is None or loop.max_iterations < 2:
            continue
        try:
            outside = {r.name for r in expression_references(env, loop.until) if r.name in by_id} - set(body)
        except TemplateSyntaxError:
            continue  # reported by _check_loops
        for member in body:
            if member in edges:
                edges[member] = sorted(set(edges[member]) | outside)
    for cycle in find_cycles(edges):
        first = by_id[cycle[0]]
        out.append(Problem(first.path, f"dependency cycle: {' -> '.join(cycle)}", cycle[0]))
    return out


def _check_control(
    node: DeclaredNode, inputs: set[str], by_id: dict[str, DeclaredNode], out: list[Problem]
) -> str | None:
    """Checks of `when`, `foreach` and `kind: reduce`; returns the element name of a foreach node."""
    spec = node.spec
    for name in ("when", "foreach"):
        text = getattr(spec, name)
        if text is not None and not is_single_expression(expression_source(text)):
            out.append(
                Problem(
                    node.path + (name,),
                    f"'{name}' must be one expression, e.g. {name}: \"{{{{ x.output == 'y' }}}}\" (got {text!r})",
                    node.id,
                )
            )
    if isinstance(spec, ReduceNode):
        if not is_single_expression(spec.input):
            out.append(
                Problem(
                    node.path + ("input",),
                    f'a reduce node\'s input must be one expression giving a list, e.g. "{{{{ answers.output }}}}" '
                    f"(got {spec.input!r})",
                    node.id,
                )
            )
        read = {ref.name for _, refs in node.slot_references for ref in refs}
        if not read & set(by_id) and not read & inputs:
            out.append(
                Problem(
                    node.path + ("input",), "a reduce node's input reads no node or input: nothing to reduce", node.id
                )
            )
    if spec.foreach is None:
        for field in ("max_items", "truncate"):
            if field in spec.model_fields_set:
                out.append(Problem(node.path + (field,), f"'{field}' applies to foreach nodes only", node.id))
        if "as_" in spec.model_fields_set:
            out.append(
                Problem(
                    node.path + ("as",), "'as' names the element of a foreach node; this node has no foreach", node.id
                )
            )
        return None
    element = spec.as_
    if element in inputs or element in by_id or element in RESERVED:
        what = "an input" if element in inputs else "a node id" if element in by_id else "a reserved name"
        out.append(
            Problem(node.path + ("as",), f"foreach element name '{element}' is also {what}; pick another 'as'", node.id)
        )
    return element


def _check_model_settings(header: WorkflowHeader, out: list[Problem]) -> None:
    # Engines are keyed by source: two names for one source share an engine, so they cannot ask for
    # two different dtypes or weight formats of it.
    first: dict[str, tuple[str, dict[str, str]]] = {}
    for name, model in header.models.items():
        settings = model.engine_settings()
        seen = first.setdefault(model.source, (name, settings))
        if seen[1] != settings:
            out.append(
                Problem(
                    ("models", name),
                    f"model '{name}' and model '{seen[0]}' name the same source {model.source!r} with different "
                    f"settings ({settings or 'the run default'} vs {seen[1] or 'the run default'}); one source "
                    "is one engine: give them the same dtype/weights",
                )
            )


def _check_model_paths(header: WorkflowHeader, out: list[Problem]) -> None:
    # A source written as a path (registered names have no '/') must exist now, not fail at load time
    # without a line. Relative paths resolve from the working directory, as the engine's loader does.
    for name, model in header.models.items():
        source = model.source
        if ("/" in source or source.startswith(("~", ".")) or source.endswith(".gguf")) and not (
            Path(source).expanduser().exists()
        ):
            out.append(
                Problem(
                    ("models", name, "source"),
                    f"model '{name}': no such file or directory {source!r} (a path source is a .gguf file or "
                    "an HF directory with config.json)",
                )
            )


def _check_ids(header: WorkflowHeader, declared: Sequence[DeclaredNode], out: list[Problem]) -> dict[str, DeclaredNode]:
    by_id: dict[str, DeclaredNode] = {}
    for node in declared:
        if node.id in by_id:
            first = by_id[node.id].path
            out.append(
                Problem(
                    node.path + ("id",),
                    f"duplicate node id '{node.id}' (first declared at {'.'.join(map(str, first))})",
                    node.id,
                )
            )
            continue
        by_id[node.id] = node
        if node.id in RESERVED:
            out.append(Problem(node.path + ("id",), f"'{node.id}' is a reserved name", node.id))
        if node.id in header.inputs:
            out.append(Problem(node.path + ("id",), f"node id '{node.id}' is also a declared input", node.id))
    for index, name in enumerate(header.inputs):
        if name in RESERVED:
            out.append(Problem(("inputs", index), f"input '{name}' is a reserved name"))
        if name in header.inputs[:index]:
            out.append(Problem(("inputs", index), f"input '{name}' is declared twice"))
    return by_id


def _check_reference(
    ref: Reference,
    reader: str | None,
    path: DocPath,
    inputs: set[str],
    by_id: dict[str, DeclaredNode],
    in_loop: bool,
    broken: Collection[str],
    out: list[Problem],
    unchecked: Collection[str] = (),
) -> None:
    if ref.name in inputs or ref.name in unchecked:
        return
    if ref.name == ITERATION:
        if not in_loop:
            out.append(Problem(path, f"'{ITERATION}' is only defined inside a loop body", reader))
        return
    target = by_id.get(ref.name)
    if target is None:
        if "inputs" not in broken:
            out.append(
                Problem(
                    path,
                    f"template reads '{ref.name}', which is neither a declared input "
                    f"(inputs: {', '.join(sorted(inputs)) or 'none'}) nor a node id",
                    reader,
                )
            )
        return
    fields = output_fields(target.spec)
    if ref.field is None:
        out.append(
            Problem(
                path,
                f"node '{ref.name}' must be read through a field, e.g. {ref.name}.output "
                f"(fields: {', '.join(sorted(fields))})",
                reader,
            )
        )
    elif ref.field != DYNAMIC_FIELD and ref.field not in fields:
        out.append(
            Problem(
                path,
                f"node '{ref.name}' ({target.spec.kind}) has no field '{ref.field}' "
                f"(fields: {', '.join(sorted(fields))})",
                reader,
            )
        )


def _check_loops(
    header: WorkflowHeader,
    by_id: dict[str, DeclaredNode],
    bodies: list[tuple[str, ...]],
    env: ImmutableSandboxedEnvironment,
    inputs: set[str],
    broken: Collection[str],
    out: list[Problem],
    unchecked: Collection[str] = (),
) -> None:
    seen: dict[str, int] = {}
    for index, loop in enumerate(header.loops):
        for position, name in enumerate(loop.nodes):
            path: DocPath = ("loops", index, "nodes", position)
            if name in unchecked:
                continue
            if name not in by_id:
                out.append(Problem(path, f"loop {index} names unknown node '{name}'"))
            elif by_id[name].parent is not None:
                out.append(
                    Problem(
                        path,
                        f"'{name}' is a tool call extracted from '{by_id[name].parent}'; "
                        "put that llm node in the loop instead",
                        name,
                    )
                )
            elif name in seen:
                out.append(
                    Problem(
                        path,
                        f"node '{name}' is in loop {seen[name]} and loop {index}; a node belongs to one loop at most",
                        name,
                    )
                )
            else:
                seen[name] = index
        if loop.until is None:
            continue
        try:
            refs = expression_references(env, loop.until)
        except TemplateSyntaxError as exc:
            out.append(Problem(("loops", index, "until"), f"'until' is not a valid expression: {exc.message}"))
            continue
        for ref in sorted(refs):
            _check_reference(ref, None, ("loops", index, "until"), inputs, by_id, True, broken, out, unchecked)


def _check_outputs(
    header: WorkflowHeader, by_id: dict[str, DeclaredNode], inputs: set[str], out: list[Problem]
) -> None:
    for name, targets in header.outputs.items():
        for position, target in enumerate([targets] if isinstance(targets, str) else targets):
            path: DocPath = ("outputs", name) if isinstance(targets, str) else ("outputs", name, position)
            _check_output(header, by_id, inputs, name, path, target, out)


def _check_output(
    header: WorkflowHeader,
    by_id: dict[str, DeclaredNode],
    inputs: set[str],
    name: str,
    path: DocPath,
    target: str,
    out: list[Problem],
) -> None:
    head, _, rest = target.partition(".")
    if head in inputs and (not rest or head not in header.inputs):
        return  # an input, or a node too broken to check (already reported)
    if head not in by_id:
        out.append(Problem(path, f"output '{name}' reads '{head}', which is neither a node nor an input"))
        return
    field = rest.split(".", 1)[0].split("[", 1)[0]
    fields = output_fields(by_id[head].spec)
    if field not in fields:
        out.append(
            Problem(
                path,
                f"output '{name}': node '{head}' has no field '{field or '(none)'}' "
                f"(fields: {', '.join(sorted(fields))})",
                head,
            )
        )
