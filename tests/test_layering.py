"""Imports point down the pipeline and never go round in a circle.

The rule (docs/architecture.md, DESIGN.md "The house"): serve → runtime → plan → spec;
runtime → engine → kernels / `halo._core`; nothing imports upward. Every module of python/halo,
of kernels/ (installed as `halo.kernels`) and of bench/ is parsed with `ast`, and every import of
one of them counts: at module level, inside a function and under `if TYPE_CHECKING:` alike. A
deferred import is still a dependency; deferring it only hides a cycle from the interpreter.

Three checks:
1. layers: each layer imports only from the layers `ALLOWED` names for it;
2. no cycle among modules through their module-level imports;
3. no cycle either once the deferred imports (in functions, under TYPE_CHECKING) are added: a
   deferred import may exist for another reason (an optional heavy dependency, start-up time), but
   never to dodge a cycle. `DEFERRED_ALLOWED` lists the exceptions, each with its reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from halo.spec.dependencies import find_cycles

REPO = Path(__file__).resolve().parents[1]
# Where each importable package's sources live in the checkout (kernels/ is installed as halo.kernels).
SOURCE_ROOTS = {"halo": REPO / "python" / "halo", "halo.kernels": REPO / "kernels", "bench": REPO / "bench"}
NATIVE_MODULES = ("halo._core",)  # the pybind11 extension: no Python source, imports nothing of ours

ANY = frozenset({"*"})
# Layer -> the layers it may import from. A layer is a subpackage of halo (halo.spec, halo.runtime...), a
# top-level module (halo.errors, halo.cli...), "halo" itself (its __init__) or "bench".
ALLOWED: dict[str, frozenset[str]] = {
    "halo.spec": frozenset({"halo.errors", "halo.output_grammar"}),
    # The cost evaluator and the epoch DP have native twins in halo._core.
    "halo.plan": frozenset({"halo.spec", "halo._core", "halo.errors"}),
    "halo.engine": frozenset(
        {"halo.kernels", "halo._core", "halo.errors", "halo.durable_files", "halo.output_grammar"}
    ),
    "halo.runtime": frozenset(
        {
            "halo.plan",
            "halo.spec",
            "halo.engine",
            "halo.kernels",
            "halo._core",
            "halo.errors",
            "halo.batch_io",
            "halo.durable_files",
        }
    ),
    # serve never reaches into the engine: the engine types its chat endpoint needs (LLMEngine, SamplingParams,
    # GenerationResult, the default model) come through halo.runtime.chat_engine, and compiling a workflow
    # through halo.runtime, like every other use of the engine.
    "halo.serve": frozenset({"halo.runtime", "halo.plan", "halo.spec", "halo.errors"}),
    "halo.kernels": frozenset(),
    "halo.errors": frozenset(),
    "halo.durable_files": frozenset(),
    "halo.output_grammar": frozenset(),
    "halo.batch_io": frozenset({"halo.errors"}),
    "halo": frozenset({"halo.spec", "halo.runtime"}),  # the package's public re-exports: Workflow, compile
    "halo.cli": ANY,  # the command line is the top of the house
    "bench": ANY,  # outside the package: drives all of it (and only the cli imports bench)
}

# (importer, imported) -> why a layer violation is tolerated for now. Empty: every import points down.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {}

# (importer, imported) -> why this deferred import stays out of check 3. Empty today: the deferred imports
# kept for another reason (the optional heavy dependencies triton, ray, cupy, transformers, matplotlib,
# openai, uvicorn; `import halo` staying fast; bench/suite.py being loaded by path before bench/ is on
# sys.path) all close no cycle, so they need no exemption. Only such a reason may ever add an entry.
DEFERRED_ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    where: str  # "module", "function" or "typing" (under `if TYPE_CHECKING:`)
    file: Path
    line: int

    def __str__(self) -> str:
        at = "" if self.where == "module" else f" ({self.where}-level)"
        return f"{self.importer} -> {self.imported}{at} at {self.file.relative_to(REPO)}:{self.line}"


def module_files() -> dict[str, tuple[Path, bool]]:
    """Module name -> (source file, is a package)."""
    out: dict[str, tuple[Path, bool]] = {}
    for package, root in SOURCE_ROOTS.items():
        for file in sorted(root.rglob("*.py")):
            parts = list(file.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            out[".".join([package, *parts])] = (file, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, where: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, where
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _imports(node, "function")
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), "typing" if where == "module" else where)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), where)
        else:
            yield from _imports(node, where)


def scan() -> list[Import]:
    """Every import of one of our modules by another, resolved to the module it loads."""
    files = module_files()
    known = set(files) | set(NATIVE_MODULES)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found: list[Import] = []
    for module, (file, is_package) in files.items():
        package = module if is_package else module.rpartition(".")[0]
        for node, where in _imports(ast.parse(file.read_text(), str(file)), "module"):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                # `from pkg import name` loads pkg.name when that is a module, else pkg itself.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in targets:
                resolved = resolve(target) if target.split(".")[0] in ("halo", "bench") else None
                if resolved is not None and resolved != module:
                    found.append(Import(module, resolved, where, file, node.lineno))
    return list(dict.fromkeys(found))  # `from m import a, b` names m once


def layer(module: str) -> str:
    parts = module.split(".")
    return "bench" if parts[0] == "bench" else ".".join(parts[:2])


def cycles(imports: list[Import]) -> list[list[str]]:
    """One cycle per strongly connected component of the import graph that has one, as [a, b, ..., a]."""
    edges: dict[str, list[str]] = {}
    for imp in imports:
        edges.setdefault(imp.importer, [])
        edges.setdefault(imp.imported, [])
        if imp.imported not in edges[imp.importer]:
            edges[imp.importer].append(imp.imported)
    return find_cycles({name: sorted(edges[name]) for name in sorted(edges)})


def describe_cycles(imports: list[Import]) -> str:
    lines = []
    for cycle in cycles(imports):
        lines.append("cycle: " + " -> ".join(cycle))
        steps = set(zip(cycle, cycle[1:], strict=False))
        lines += [f"    {imp}" for imp in imports if (imp.importer, imp.imported) in steps]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return scan()


def test_the_scan_sees_the_package(imports: list[Import]) -> None:
    """Guards the checks below against passing because the scan found nothing."""
    edges = {(i.importer, i.imported, i.where) for i in imports}
    assert ("halo.runtime.llm_worker", "halo.engine", "module") in edges
    assert ("halo.engine.llm_engine", "halo.kernels", "function") in edges  # the Triton backend, deferred
    assert ("halo.plan.search.native", "halo._core", "function") in edges  # `from halo import _core`
    assert ("halo.kernels", "halo.kernels.reference", "module") in edges  # relative import in kernels/
    assert any(i.importer.startswith("bench.") for i in imports)
    assert set(map(layer, {i.importer for i in imports})) <= set(ALLOWED), "a new layer needs its rule in ALLOWED"


def test_layers_import_only_downward(imports: list[Import]) -> None:
    for (importer, imported), reason in LAYER_EXCEPTIONS.items():
        print(f"layer exception: {importer} -> {imported}: {reason}")
    upward = [
        imp
        for imp in imports
        if layer(imp.importer) != layer(imp.imported)
        and ALLOWED[layer(imp.importer)] != ANY
        and layer(imp.imported) not in ALLOWED[layer(imp.importer)]
        and (imp.importer, imp.imported) not in LAYER_EXCEPTIONS
    ]
    assert not upward, "imports against the layering rule:\n" + "\n".join(map(str, upward))


def test_no_cycle_at_module_level(imports: list[Import]) -> None:
    cycles = describe_cycles([i for i in imports if i.where == "module"])
    assert not cycles, "module-level import cycles:\n" + cycles


def test_no_deferred_import_dodges_a_cycle(imports: list[Import]) -> None:
    for (importer, imported), reason in DEFERRED_ALLOWED.items():
        print(f"deferred import allowed: {importer} -> {imported}: {reason}")
    counted = [i for i in imports if (i.importer, i.imported) not in DEFERRED_ALLOWED]
    cycles = describe_cycles(counted)
    assert not cycles, "cycles once deferred imports (in functions, under TYPE_CHECKING) count:\n" + cycles


def test_exceptions_are_still_needed(imports: list[Import]) -> None:
    """An entry whose import is gone must leave its list, so the lists only shrink."""
    edges = {(i.importer, i.imported) for i in imports}
    stale = [pair for pair in {**DEFERRED_ALLOWED, **LAYER_EXCEPTIONS} if pair not in edges]
    assert not stale, f"no longer imported, remove from the allow-lists: {stale}"


def test_deferred_and_type_only_imports_are_seen_and_close_cycles() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import halo.a\n"
        "if TYPE_CHECKING:\n"
        "    import halo.b\n"
        "def f():\n"
        "    import halo.c\n"
    )
    seen = [(node.names[0].name, where) for node, where in _imports(ast.parse(source), "module") if node.lineno > 1]
    assert seen == [("halo.a", "module"), ("halo.b", "typing"), ("halo.c", "function")]
    file = REPO / "x.py"
    a_b = Import("halo.a", "halo.b", "module", file, 1)
    b_a = Import("halo.b", "halo.a", "function", file, 2)
    assert cycles([a_b, b_a]) == [["halo.a", "halo.b", "halo.a"]]
    assert cycles([a_b]) == []
