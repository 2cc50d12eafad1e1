"""Fuzz the spec loader for as long as asked: mutated real workflows must fail only with located HaloErrors.

Run: ``.venv/bin/python bench/fuzz_spec.py --examples 20000 [--seed N]``. The same strategy and
contract as tests/spec/test_fuzz_spec.py (which CI runs with 200 derandomized examples); here the
examples are random unless --seed is given. Prints the cases per second and, on a failure, the
shrunk input and the exception; exits 1 then.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "spec"))
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from spec_mutations import SEEDS, check_loader, mutated_workflow  # noqa: E402  (the strategy the test uses)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="how many mutated workflows to try")
    parser.add_argument("--seed", type=int, default=None, help="a fixed seed, for a reproducible run")
    args = parser.parse_args()

    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated_workflow())
    def run(source: str | bytes) -> None:
        check_loader(source)

    if args.seed is not None:
        run = seed(args.seed)(run)
    print(f"seeds={len(SEEDS)} examples={args.examples} seed={args.seed}")
    started = time.perf_counter()
    try:
        run()
    except Exception as exc:  # noqa: BLE001 - report whatever hypothesis shrank to
        print(f"FAILED after {time.perf_counter() - started:.1f} s: {type(exc).__name__}: {exc}")
        for note in getattr(exc, "__notes__", ()):  # hypothesis: the falsifying (shrunk) example
            print(note)
        traceback.print_exception(exc, limit=-6)
        return 1
    elapsed = time.perf_counter() - started
    print(f"ok: {args.examples} examples in {elapsed:.1f} s ({args.examples / elapsed:.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
