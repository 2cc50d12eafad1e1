"""`halo explain --analyze WORKFLOW --input ROWS`: run the batch, print its plan beside what it measured.

Compiles the workflow as `halo run` does (the same workers, planner, dtype and weight options),
runs the rows once through `CompiledWorkflow.analyze`, and prints EXPLAIN ANALYZE as text, as JSON
(`--format json`) or draws it (`--format png`, matplotlib). Nothing is written but that output: the
run's row outputs are not kept (use `halo run` for them); failed rows count in the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from halo.errors import HaloError
from halo.runtime.compiled import compile
from halo.runtime.run_command import compile_options


def analyze(args: argparse.Namespace, rows: list[dict[str, Any]]) -> int:
    if args.format == "dot":
        raise HaloError("--analyze prints text, json or png (the dot graph has no run figures)")
    # cache off: the actual figures are of the work the plan describes, not of earlier runs' results
    with compile(args.workflow, **compile_options(args), cache=False) as app:
        for warning in app.warnings:
            print(warning, file=sys.stderr)
        analyzed = app.analyze(rows)
        defaults = app.costs.profiles_missing
    if args.format == "json":
        print(json.dumps(analyzed.numbers(), indent=2))
    elif args.format == "png":
        print(f"wrote {analyzed.draw(args.output or 'plan.png')}")
    else:
        print(analyzed.text())
        if defaults:
            print("\n(latency curves: built-in defaults; run `halo profile` for measured ones)")
    return 0
