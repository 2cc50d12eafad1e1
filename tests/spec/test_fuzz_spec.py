"""Fuzzing the spec loader over mutated real workflows: only located HaloErrors, never another exception.

A bounded, derandomized run (the same 200 cases on every machine, a few seconds); bench/fuzz_spec.py
runs the same strategy for as long as asked.
"""

from __future__ import annotations

from halo.spec import Workflow
from hypothesis import HealthCheck, given, settings
from spec_mutations import SEEDS, check_loader, mutated_workflow


def test_the_seeds_load():
    assert len(SEEDS) >= 8
    for seed in SEEDS:
        Workflow.from_yaml(seed.decode("utf-8"))


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_workflow())
def test_mutated_workflows_fail_only_with_located_halo_errors(source):
    check_loader(source)
