"""`halo run WORKFLOW.yaml --input rows.jsonl --output out.jsonl`: a batch run from the command line.

Shows a progress bar (rows done, generated tokens/s, tool calls in flight, ETA), journals finished
work next to the output (`OUT.journal.jsonl`; `--resume` continues an interrupted run from it), writes
the output atomically in input order, and ends with a summary table and a per-node table (only the
columns where some node counted something; a loop node's iterations under its total). Pure requests
an earlier run computed come from the persistent result cache (`--no-cache` turns it off,
`--cache-dir` moves it). Row errors are reported and recorded in the output (`_error`); the exit
status is non-zero for them only with `--strict`.

Before any model loads, the output and journal paths are checked (`output_file.check_paths`: a
regular file or a new name, not the input or the workflow) and, with `--resume`, the journal's
records (`journal.verify`: none foreign or altered), so a bad path or a tampered journal fails at once.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from halo.engine.speculative_modes import SPECULATIVE_HELP, SPECULATIVE_MODES
from halo.engine.weight_formats import WEIGHT_FORMATS, WEIGHTS_HELP
from halo.runtime import journal as journal_io
from halo.runtime.output_file import OutputPathError, check_paths, write_output
from halo.runtime.results import NodeStats, RunResult, RunStats

if TYPE_CHECKING:  # `halo --help` builds this parser: the engine (torch) and rich load only for a run
    from rich.console import Console
    from rich.table import Table

    from halo.runtime.processor import Progress as RunProgress


DETERMINISTIC_HELP = (
    "batch-invariant engine: each row's output is the same whatever else its step computes (alone, in any "
    "batch, with or without prefix-cache hits); default: the engine's (docs/architecture.md)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", help="workflow YAML file")
    parser.add_argument("--input", required=True, help="batch rows: .jsonl, .csv or .parquet")
    parser.add_argument("--output", required=True, help="where the outputs go: .jsonl, .csv or .parquet")
    parser.add_argument("--workers", type=int, default=1, help="LLM workers (more than one run as Ray actors)")
    parser.add_argument(
        "--ray-address", default=None, metavar="HOST:PORT", help="join this Ray cluster (default: start a local Ray)"
    )
    parser.add_argument(
        "--worker-cpus", type=float, default=None, help="CPUs each Ray worker reserves (default: cores / workers)"
    )
    parser.add_argument(
        "--worker-resources",
        default=None,
        metavar="LABEL,LABEL,...",
        help="one custom Ray resource per worker, placing worker i on a node started with it",
    )
    parser.add_argument(
        "--plan",
        default="dp",
        choices=["dp", "greedy", "serial"],
        help="planner: epoch DP (default), greedy, or the plain per-call serial baseline",
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--weights", default="auto", choices=WEIGHT_FORMATS, help=WEIGHTS_HELP)
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None, help=DETERMINISTIC_HELP)
    parser.add_argument("--speculative", default=None, choices=SPECULATIVE_MODES, help=SPECULATIVE_HELP)
    parser.add_argument("--resume", action="store_true", help="skip the work a previous run journaled")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any row failed")
    parser.add_argument("--allow-host", action="append", default=[], help="extra host http nodes may call")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-cache", action="store_true", help="neither answer from nor store into the persistent result cache"
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="the persistent result cache's folder (default: env HALO_RESULT_CACHE_DIR, else <halo cache dir>/results)",
    )


def compile_options(args: argparse.Namespace) -> dict[str, Any]:
    """What `halo run` and `halo explain --analyze` compile a workflow with, from their shared flags
    (one place, so the batch explain analyzes runs on what `halo run` would start)."""
    return {
        "workers": args.workers,
        # `halo explain --analyze` has no cluster flags: it runs on workers this machine starts
        "ray_address": getattr(args, "ray_address", None),
        "worker_cpus": getattr(args, "worker_cpus", None),
        "worker_resources": _names(getattr(args, "worker_resources", None)),
        "plan": args.plan,
        "dtype": args.dtype,
        "engine_options": {"weights": args.weights} | _deterministic(args) | _speculative(args),
        "allowed_hosts": args.allow_host,
    }


def _deterministic(args: argparse.Namespace) -> dict[str, bool]:
    """``--deterministic`` / ``--no-deterministic`` as an engine option; absent: the engine's default."""
    value = getattr(args, "deterministic", None)
    return {} if value is None else {"deterministic": value}


def _speculative(args: argparse.Namespace) -> dict[str, str]:
    """``--speculative MODE`` as an engine option; absent: the engine's default."""
    value = getattr(args, "speculative", None)
    return {} if value is None else {"speculative": value}


def run(args: argparse.Namespace) -> int:
    collector_paused = pause_collector(getattr(args, "as_program", False))  # until the models are loaded
    from rich.console import Console

    from halo.batch_io import read_rows
    from halo.runtime.compiled import compile

    console = Console(stderr=True)
    output = Path(args.output)
    journal = output.with_name(output.name + ".journal.jsonl")
    check_paths(
        {"--output": output, "journal": journal}, {"input file": Path(args.input), "workflow file": Path(args.workflow)}
    )
    rows = read_rows(args.input)
    if journal.exists() and args.resume:
        journal_io.verify(journal)
    elif journal.exists():
        console.print(f"[yellow]starting over: {journal} exists (pass --resume to continue that run)[/]")
    clock = time.perf_counter()
    with console.status("loading models and binding tools ...", spinner="dots") if not args.quiet else _Null():
        app = compile(args.workflow, **compile_options(args), cache=not args.no_cache, cache_dir=args.cache_dir)
    load_s = time.perf_counter() - clock
    resume_collector(collector_paused)
    for warning in app.warnings:
        console.print(f"[yellow]{warning}[/]")
    engines = _engine_lines(app)
    try:
        result = _run_with_progress(app, rows, journal, args, console)
    finally:
        app.close()
    try:
        write_output(output, result)
    except OutputPathError as exc:
        if journal.exists():  # the work is not lost: a rerun with --resume only writes the output
            raise OutputPathError(f"{exc}; the finished work is kept in {journal}: rerun with --resume") from None
        raise
    if result.stats.rows_failed == 0:
        journal.unlink(missing_ok=True)  # nothing left to resume
    _summary(console, result, load_s, output, engines)
    return 1 if args.strict and result.errors else 0


def _names(listed: str | None) -> list[str] | None:
    """`a,b` -> ["a", "b"] (None when the option was not given)."""
    return None if listed is None else [name.strip() for name in listed.split(",")]


def pause_collector(as_program: bool) -> bool:
    """Turn the cyclic garbage collector off for start-up when `halo run` is the program; whether it did.

    Start-up makes about a million long-lived objects (torch's modules, the spec, the engine) and no
    garbage worth a pass; the collector would traverse them again and again (gen-2 passes: 0.3-0.5 s
    of a 3 s start). `resume_collector` freezes them (later passes skip them) and turns it back on for
    the batch. A caller's own process (``main([...])``, a test) is left alone."""
    if not as_program or not gc.isenabled():
        return False
    gc.disable()
    return True


def resume_collector(paused: bool) -> None:
    if paused:
        gc.freeze()
        gc.enable()


def _run_with_progress(
    app: Any, rows: list[dict], journal: Path, args: argparse.Namespace, console: Console
) -> RunResult:
    if args.quiet:
        return app.run(rows, journal=journal, resume=args.resume)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]rows"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[tools]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("run", total=len(rows), rate="", tools="")
        start = time.perf_counter()

        def update(p: RunProgress) -> None:
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(
                task,
                completed=p.rows_done,
                rate=f"{p.generated_tokens / elapsed:,.0f} tok/s",
                tools=f"{p.tools_in_flight} tool calls in flight",
            )

        result = app.run(rows, journal=journal, resume=args.resume, on_progress=update)
        bar.update(task, completed=len(rows))
    return result


def _engine_lines(app: Any) -> dict[str, str]:
    """Per model of an in-process worker, its compute dtype and weight format with the reasons (what
    `--dtype`/`--weights auto` chose); empty for Ray workers, whose engines live in their actors."""
    if app.num_workers != 1:
        return {}
    lines = {}
    for source in app.model_sources:
        d = app.engine(source).describe()
        lines[source] = f"{d['dtype']} ({d['dtype_reason']}), weights {d['weights']} ({d['weights_reason']})"
    return lines


def _summary(console: Console, result: RunResult, load_s: float, output: Path, engines: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result.stats
    table = Table(title=f"halo run: {s.rows} rows -> {output}", show_header=True)
    table.add_column("")
    table.add_column("logical", justify="right")
    table.add_column("executed", justify="right")
    table.add_row("llm calls", f"{s.llm_calls_logical:,}", f"{s.llm_calls_executed:,}")
    table.add_row("tool calls", f"{s.tool_calls_logical:,}", f"{s.tool_calls_executed:,}")
    table.add_row("prompt tokens", f"{s.prompt_tokens:,}", f"{s.prefill_tokens:,} computed")
    table.add_row("prefix-cache hits", "", f"{s.cached_tokens:,} tokens")
    table.add_row("decode tokens", "", f"{s.decode_tokens:,}")
    if s.persistent_cache_hits or s.persistent_cache_stores:
        table.add_row("result cache", "", f"{s.persistent_cache_hits:,} hits, {s.persistent_cache_stores:,} stored")
    table.add_row("rows failed", "", f"{s.rows_failed:,}")
    if s.rows_resumed:
        table.add_row("rows resumed", "", f"{s.rows_resumed:,}")
    table.add_row("time", f"load {load_s:.1f}s  plan {s.plan_s:.2f}s", f"run {s.wall_s:.1f}s")
    if s.epochs:
        actual = sum(e.actual_s for e in s.epochs)
        table.add_row(
            f"plan ({s.planner})",
            f"{len(s.epochs)} epochs, {s.predicted_s:.2f}s predicted",
            f"{actual:.2f}s in llm epochs",
        )
    console.print(table)
    if s.nodes:  # a log (not a terminal) gets whole rows, not 80 columns
        wide = console if console.is_terminal else Console(file=console.file, width=160)
        wide.print(node_table(s))
    for source, line in engines.items():
        console.print(f"engine {source}: {line}", soft_wrap=True)  # one line a log can grep
    for error in result.errors[:10]:
        console.print(f"[red]row {error.row}[/] {error.node}: {error.message}")
    if len(result.errors) > 10:
        console.print(f"... and {len(result.errors) - 10} more failed rows (see `_error` in the output)")


# (column, value of a node's counters): the per-node table shows the columns where some node is non-zero
LLM_ONLY = frozenset({"joined", "prompt", "computed", "cached", "decode"})
NODE_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("logical", lambda n: n.logical),
    ("executed", lambda n: n.executed),
    ("merged", lambda n: n.merged),
    ("coalesced", lambda n: n.coalesced),
    ("joined", lambda n: n.joined),
    ("tool cache", lambda n: n.tool_cache_hits),
    ("persistent", lambda n: n.persistent_hits),
    ("prompt", lambda n: n.prompt_tokens),
    ("computed", lambda n: n.computed_tokens),
    ("cached", lambda n: n.cached_tokens),
    ("decode", lambda n: n.decode_tokens),
    ("busy s", lambda n: n.busy_s),
    ("span s", lambda n: n.span_s),
    ("skipped", lambda n: n.skipped),
    ("failed", lambda n: n.failed),
    ("cancelled", lambda n: n.cancelled),
)


def node_table(stats: RunStats) -> Table:
    """Per graph node: calls, hits by reason, tokens, time (busy: spans summed; span: first start..last
    end), skipped, failed and cancelled instances."""
    from rich import box
    from rich.table import Table

    rows: list[tuple[str, str, NodeStats]] = []  # (label, kind, counters)
    totals = stats.by_name()
    for name, total in totals.items():
        parts = [(node_id, n) for node_id, n in stats.nodes.items() if n.name == name]
        rows.append((name, total.kind, total))
        if len(parts) > 1 or parts[0][0] != name:  # a loop node: its iterations under its total
            rows += [(f"  {node_id}", n.kind, n) for node_id, n in parts]
    shown = [(label, value) for label, value in NODE_COLUMNS if any(value(n) for _, _, n in rows)]
    table = Table(title="per node", show_header=True, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("node")
    table.add_column("kind")
    for label, _ in shown:
        table.add_column(label, justify="right")
    for label, kind, n in rows:
        table.add_row(label, kind, *(_cell(n, column, value) for column, value in shown))
    return table


def _cell(n: NodeStats, column: str, value: Any) -> str:
    if column in LLM_ONLY and n.kind != "llm":
        return "-"
    if column == "span s":
        return "-" if n.start_s is None or n.end_s is None else f"{n.start_s:.2f}..{n.end_s:.2f}"
    v = value(n)
    return f"{v:.2f}" if isinstance(v, float) else f"{v:,}"


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
