"""Resource bounds (`halo.spec.limits.Limits`): each exceeded bound is a located HaloError, raised fast.

Load time: file size, YAML nesting, alias expansion (billion laughs), recursive aliases, values PyYAML
cannot build, non-UTF-8 bytes, template nesting, integer ranges. Render time: output size, time,
`range`, recursion, the llm prompt length.

"Fast" is measured in this process's CPU seconds (`time.process_time`), not wall time: other work on
the machine stretches wall time but not the CPU time the refusal costs, and each unguarded case
would cost hours of it, so the bounds stay meaningful on a loaded CI machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from halo.spec import SpecError, TemplateRenderError, Workflow
from halo.spec.limits import DEFAULT_LIMITS, Limits

HEAD = "name: t\ninputs: [v]\nnodes:\n  - {id: a, kind: llm, prompt: 'hi {{ v }}'}\n"  # 4 lines


def _load_error(text: str | bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[str, float]:
    started = time.process_time()
    with pytest.raises(SpecError) as caught:
        Workflow.from_yaml(text, limits=limits)
    return str(caught.value), time.process_time() - started


def _render(prompt: str, row: dict[str, object] | None = None, limits: Limits = DEFAULT_LIMITS) -> str:
    wf = Workflow("t").inputs("v").llm("a", prompt=prompt).outputs(o="a.output").with_limits(limits)
    node = wf.graph.node("a")
    return wf.graph.render(node, row or {"v": 1})["prompt"]


def _render_error(
    prompt: str, limits: Limits = DEFAULT_LIMITS, row: dict[str, object] | None = None
) -> tuple[str, float]:
    started = time.process_time()
    with pytest.raises(TemplateRenderError) as caught:
        _render(prompt, row, limits)
    assert caught.value.node == "a" and caught.value.field == "prompt"
    return str(caught.value), time.process_time() - started


# -- load time ---------------------------------------------------------------------------------------


def test_billion_laughs_is_refused_at_its_line_in_bounded_time_and_memory():
    lol = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 10))
    message, took = _load_error(
        HEAD + 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + lol
    )
    assert "line 9" in message and "expands to more than 50000 nodes" in message and "max_yaml_nodes" in message
    assert took < 1.0


def test_recursive_alias_is_refused_at_its_line():
    message, took = _load_error(HEAD + "x: &n [1, *n]\n")
    assert "line 5" in message and "alias '*n' is inside the node it names" in message
    assert took < 1.0


@pytest.mark.parametrize(
    "nested",
    [
        "x: " + "[" * 3000 + "]" * 3000,
        "x: " + "{a: " * 3000 + "1" + "}" * 3000,
        "x:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 300)),
    ],
    ids=["flow-seq", "flow-map", "block"],
)
def test_deep_nesting_is_refused_at_its_line(nested):
    message, took = _load_error(HEAD + nested + "\n")
    assert "line " in message and ("nested deeper than 100 levels" in message or "maximum nesting depth" in message)
    assert took < 1.0


def test_alias_chains_count_towards_the_depth():
    chain = "".join(f"a{i}: &a{i} [{f'*a{i - 1}' if i else 1}]\n" for i in range(150))
    message, _ = _load_error(HEAD + chain)
    assert "line 104" in message and "nests deeper than 100 levels" in message


def test_depth_and_node_bounds_are_configurable():
    text = HEAD + "  - {id: b, kind: llm, prompt: hi, fallback: [[[[1]]], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}\n"
    Workflow.from_yaml(text)  # within the defaults
    assert "nested deeper than 3 levels" in _load_error(text, Limits(max_yaml_depth=3))[0]
    assert "more than 20 nodes" in _load_error(text, Limits(max_yaml_nodes=20))[0]


def test_oversized_file_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(HEAD + "x: '" + "a" * 5_000_000 + "'\n")
    message, _ = _load_error(str(path))
    assert str(path) in message and "larger than the limit of 4194304 bytes" in message
    assert "more than the limit of 50 " in _load_error(HEAD, Limits(max_yaml_bytes=50))[0]


def test_values_pyyaml_cannot_build_are_located():
    assert "line 5" in (m := _load_error(HEAD + "x: " + "1" * 5000 + "\n")[0]) and "cannot read value" in m
    assert "line 5" in (m := _load_error(HEAD + "x: 2001-13-45\n")[0]) and "month must be in 1..12" in m
    assert "line 5" in (m := _load_error(HEAD + "x: !!int \n")[0]) and "cannot read value ''" in m  # IndexError
    assert "line 5" in (m := _load_error(HEAD + "x: \x07\n")[0]) and "unacceptable character" in m
    assert "line 5" in (m := _load_error(HEAD + "x: \ud800\n")[0]) and "not Unicode text" in m


def test_non_utf8_file_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(HEAD.encode() + "x: café\n".encode("latin-1"))
    message, _ = _load_error(Path(path))
    assert f"{path}:5" in message
    assert "not UTF-8 text: byte 78 (0xe9, line 5, column 7)" in message
    assert "line 5" in _load_error(HEAD.encode() + b"x: \xff\n")[0]  # bytes given directly, too


def test_seed_and_other_integers_have_ranges_at_their_line():
    node = "  - {id: b, kind: llm, prompt: hi, %s}\n"
    message, _ = _load_error(HEAD + node % "seed: 1180591620717411303424")  # 2**70
    assert "line 5, node 'b': invalid 'seed'" in message and "9223372036854775807" in message
    Workflow.from_yaml(HEAD + node % f"seed: {2**63 - 1}")
    assert "invalid 'max_tokens'" in _load_error(HEAD + node % "max_tokens: 100000000000")[0]
    assert "invalid 'retries'" in _load_error(HEAD + node % "retries: 100000")[0]
    rule = "  - {id: r, kind: rule, input: '{{ v }}', regex: '(a)', group: -1}\n"
    assert "group -1 does not exist" in _load_error(HEAD + rule)[0]


@pytest.mark.parametrize(
    "template",
    [
        "{{ " + "(" * 3000 + "v" + ")" * 3000 + " }}",
        "{% if v %}" * 300 + "x" + "{% endif %}" * 300,
        "{% for i in v %}" * 25 + "{% endfor %}" * 25,
    ],
    ids=["brackets", "ifs", "fors"],
)
def test_deeply_nested_templates_are_located_syntax_errors(template):
    text = HEAD + f"  - id: b\n    kind: llm\n    prompt: {template!r}\n"
    message, took = _load_error(text)
    assert "line 7, node 'b': template syntax error in 'prompt'" in message
    assert "nested deeper than 20 levels" in message and "max_template_depth" in message
    assert took < 1.0


def test_long_operator_chain_is_a_located_syntax_error():
    message, _ = _load_error(HEAD + "  - {id: b, kind: llm, prompt: '{{ " + "+".join(["v"] * 3000) + " }}'}\n")
    assert "line 5, node 'b': template syntax error in 'prompt'" in message and "too deeply nested" in message


# -- render time -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'a' * 10**9 }}",
        "{{ ['a'] * 10**9 }}",
        "{{ 10 ** (10 ** 10) }}",
        "{% set s = 'a' * 900000 %}{{ s ~ s }}",
        "{% set s = 'a' * 900000 %}{{ s + s }}",
        "{{ 'a' | center(10**9) }}",
        "{{ 'a'.ljust(10**9) }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '%*d' % (999999999, 1) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '{:>{}}'.format(1, 999999999) }}",
        "{{ ('a' * 100000) | replace('a', 'bbbbbbbbbbbbbbbbbbbb') }}",
        "{{ (['a' * 100000] * 100) | join }}",
        "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
    ],
)
def test_oversized_output_is_refused_before_it_is_built(template):
    message, took = _render_error(template)
    assert "above the limit of 1000000 (Limits.max_render_chars)" in message
    assert took < 2.5


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
        "{% set x %}{% for i in range(99999) %}{% for j in range(99999) %}a{% endfor %}{% endfor %}{% endset %}",
        "{% for i in range(99999) %}{% for c in v %}{% endfor %}{% endfor %}",
    ],
    ids=["silent-loops", "set-block", "loop-over-data"],
)
def test_loops_that_print_nothing_stop_at_the_deadline(template):
    message, took = _render_error(template, Limits(max_render_seconds=0.3), row={"v": "x" * 100000})
    assert "rendering took longer than 0.3 s (Limits.max_render_seconds)" in message
    assert took < 1.5


def test_range_recursion_and_arithmetic_errors_are_render_errors():
    assert "range too big" in _render_error("{{ range(10**9) }}")[0]
    assert "recursion too deep" in _render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")[0]
    assert "ZeroDivisionError" in _render_error("{{ 1 / v }}", row={"v": 0})[0]


def test_ordinary_templates_render_unchanged():
    out = _render("{{ v }} {% for i in range(3) %}{{ i ~ '-' }}{% endfor %} {{ '%3d' % 7 }} {{ 'x' | center(5) }}")
    assert out == "1 0-1-2-   7   x  "
    assert _render("{{ 'ab' * 3 }} {{ [1] + [2] }} {{ 2 ** 10 }} {{ 'Order 12345678: {}'.format(v) }}") == (
        "ababab [1, 2] 1024 Order 12345678: 1"
    )


def test_render_bounds_are_configurable():
    assert _render("{{ 'a' * 2000 }}") == "a" * 2000
    assert "above the limit of 1000 " in _render_error("{{ 'a' * 2000 }}", Limits(max_render_chars=1000))[0]


def test_llm_prompt_length_is_bounded_before_tokenizing():
    limits = Limits(max_prompt_chars=1000)
    wf = Workflow("t").inputs("v").llm("a", system="{{ v }}", prompt="{{ v }}").outputs(o="a.output")
    wf = wf.with_limits(limits)
    node = wf.graph.node("a")
    assert wf.graph.render(node, {"v": "x" * 400})["prompt"] == "x" * 400
    with pytest.raises(TemplateRenderError) as caught:
        wf.graph.render(node, {"v": "x" * 600})  # each slot is small; together they pass the bound
    assert caught.value.node == "a" and caught.value.field == "prompt"
    assert "rendered prompt is 1200 characters (system and prompt), above the limit of 1000" in str(caught.value)


def test_limits_reject_nonsense_values():
    with pytest.raises(ValueError, match="max_render_seconds must be a positive number"):
        Limits(max_render_seconds=0)
