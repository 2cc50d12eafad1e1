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


def test_the_planner_prices_each_model_with_its_engines_dtype_and_weight_format(
    workflow_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Profiles saved by hand (no timing): `small` (fp32 compute, int8 weights) has int8 curves of its
    # own, `other` only float ones. The planner must read each model's, from the same recipe the
    # engines are built from: in `halo explain`'s fresh planner and in a compiled app alike.
    from dataclasses import replace

    import torch
    from halo.plan.cost import DEFAULT_CURVES, save_curves
    from halo.runtime.llm_worker import EngineRecipe
    from halo.runtime.planning import fresh_planner, model_profiles

    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "cache"))
    wf = Workflow.from_yaml(workflow_file)
    a, b = (str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf"))
    recipe = EngineRecipe({"dtype": "bf16", "weights": "auto"}, wf.graph.model_settings())
    assert model_profiles(recipe, wf) == {a: ("fp32", "int8"), b: ("bf16", "auto")}
    threads = torch.get_num_threads()
    base = replace(DEFAULT_CURVES, threads=threads, source="profiled")
    small_int8 = replace(base, model="a", dtype="fp32", weights="int8", decode=(0.05, 1e-3, 1e-6))
    small_fp32 = replace(base, model="a", dtype="fp32")
    other_bf16 = replace(base, model="b", dtype="bf16", decode=(0.01, 1e-4, 1e-7))
    for curves in (small_int8, small_fp32, other_bf16):
        save_curves(curves)

    planner = fresh_planner(wf, dtype="bf16")
    assert planner.costs.curves_for(a) == small_int8 and planner.costs.curves_for(b) == other_bf16
    assert planner.costs.warnings == [] and not planner.costs.profiles_missing
    with halo.compile(workflow_file, dtype="bf16") as app:
        assert app.costs.curves_for(a) == small_int8 and app.costs.curves_for(b) == other_bf16

    planner = fresh_planner(wf, dtype="bf16", weights="int4")  # run-wide int4 reaches `other` only
    assert planner.costs.curves_for(a) == small_int8 and planner.costs.curves_for(b) == other_bf16
    (note,) = planner.costs.warnings  # `other` has no int4 profile: its bf16 curves, and a note saying so
    assert note.startswith("no int4 latency profile for model b (dtype bf16") and not planner.costs.profiles_missing
