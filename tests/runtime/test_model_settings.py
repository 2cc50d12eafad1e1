"""A workflow's per-model `dtype`/`weights` reach that model's engine; the run's options fill the rest.

Before, `models: {m: {source: ..., dtype: fp32}}` was accepted and ignored: every engine took the
run's dtype. Tiny GGUF models (tests/tiny_gguf.py) stand in for checkpoints: loading them is what is
under test, not their answers.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import halo
import pytest
from halo.cli import main
from halo.engine.weight_formats import WEIGHT_FORMATS
from halo.spec import SpecError, Workflow
from halo.spec.document import ModelSpec
from tiny_gguf import write_tiny_gguf

WORKFLOW = """\
name: two-settings
models:
  small: {{source: {a}, dtype: fp32, weights: int8}}
  other: {{source: {b}}}
inputs: [text]
nodes:
  - {{id: one, kind: llm, model: small, prompt: "{{{{ text }}}}", max_tokens: 3}}
  - {{id: two, kind: llm, model: other, prompt: "{{{{ text }}}} {{{{ one.output }}}}", max_tokens: 3}}
outputs: {{one: one.output, two: two.output}}
"""


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    a, b = write_tiny_gguf(tmp_path / "a.gguf", seed=1), write_tiny_gguf(tmp_path / "b.gguf", seed=2)
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW.format(a=a, b=b))
    return path


def test_the_spec_takes_the_engines_names_for_dtype_and_weights():
    weights = ModelSpec.model_fields["weights"].annotation.__args__[0].__args__  # Literal[...] | None
    assert set(weights) == set(WEIGHT_FORMATS)


def test_a_declared_model_gets_its_own_dtype_and_weights_and_the_other_the_runs(workflow_file: Path):
    with halo.compile(workflow_file, dtype="bf16") as app:
        small, other = (app.engine(s).describe() for s in app.model_sources)
        result = app.run([{"text": "the cat"}, {"text": "the hat"}])
    assert not result.errors and len(result.outputs) == 2
    assert (small["dtype"], small["weights"]) == ("fp32", "int8")  # declared: over the run's bf16
    assert (other["dtype"], other["weights"]) == ("bf16", "bf16")  # not declared: the run's


def test_run_wide_weights_apply_where_the_workflow_sets_none(workflow_file: Path, tmp_path: Path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "the cat"}\n')
    out = tmp_path / "out.jsonl"
    args = ["run", str(workflow_file), "--input", str(rows), "--output", str(out), "--weights", "int4", "--quiet"]
    assert main([*args, "--dtype", "fp32"]) == 0
    err = capsys.readouterr().err
    lines = sorted(line for line in err.splitlines() if line.startswith("engine "))
    assert lines[0].endswith("weights int8 (requested)"), err  # a.gguf: declared int8
    assert "weights int4 (requested)" in lines[1], err  # b.gguf: the run's --weights
    assert len(out.read_text().splitlines()) == 1


def test_an_unknown_weight_format_is_a_located_error():
    text = textwrap.dedent("""\
        name: w
        models:
          m: {source: smollm2-135m, weights: int3}
        inputs: [t]
        nodes:
          - {id: a, kind: llm, model: m, prompt: "{{ t }}"}
        outputs: {a: a.output}
        """)
    with pytest.raises(SpecError) as caught:
        Workflow.from_yaml(text)
    assert "line 3" in str(caught.value) and "int8" in str(caught.value)


def test_one_source_named_twice_with_different_settings_is_refused():
    text = textwrap.dedent("""\
        name: w
        models:
          m: {source: smollm2-135m, weights: int8}
          n: {source: smollm2-135m}
        inputs: [t]
        nodes:
          - {id: a, kind: llm, model: m, prompt: "{{ t }}"}
          - {id: b, kind: llm, model: n, prompt: "{{ t }}"}
        outputs: {a: a.output, b: b.output}
        """)
    with pytest.raises(SpecError) as caught:
        Workflow.from_yaml(text)
    assert "line 4" in str(caught.value) and "same source 'smollm2-135m'" in str(caught.value)
