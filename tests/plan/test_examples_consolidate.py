"""Every example consolidates, and its builder twin consolidates to the identical graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from halo.plan import WhitespaceTokenizer, consolidate, explain_text
from halo.spec import Workflow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))


def _builder(name: str) -> Workflow:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "spec_examples", EXAMPLES.parent / "tests/spec/test_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BUILDERS[name]()


@pytest.mark.parametrize("name", NAMES)
def test_example_consolidates_like_its_builder(name: str):
    lines = (EXAMPLES / f"{name}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    from_yaml = consolidate(Workflow.from_yaml(EXAMPLES / f"{name}.yaml"), rows, WhitespaceTokenizer())
    built = consolidate(_builder(name), rows, WhitespaceTokenizer())
    assert from_yaml.assignment == built.assignment
    assert from_yaml.counters == built.counters
    assert [p.signature for p in from_yaml.physical] == [p.signature for p in built.physical]
    assert from_yaml.physical_calls < from_yaml.logical_calls  # every batch repeats some rows
    assert explain_text(from_yaml) == explain_text(built)
