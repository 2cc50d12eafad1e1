"""Requests and results of node instances: rendering at run time, llm jobs, fallbacks, row outputs.

Shared by the Processor and the serial baseline, so both build exactly the same requests and read
results the same way (the fidelity tests compare the two).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from halo.engine import OutputFormat, SamplingParams
from halo.engine.choice_scoring import ChoiceScores
from halo.errors import HaloError
from halo.plan.prompt_tokens import chat_messages
from halo.runtime.llm_worker import LlmReply, sample_params
from halo.spec.errors import TemplateRenderError
from halo.spec.graph import GraphNode, OutputBinding, WorkflowGraph
from halo.spec.nodes import LlmNode, output_fields
from halo.spec.structured_output import OutputCheck, check_output

SKIPPED = object()  # the result of an instance whose loop guard held


@dataclass(frozen=True, slots=True)
class InstanceWork:
    """What one instance of a node asks for once its inputs exist (`instance_work`).

    `skip` is the instance's result when it does not run: SKIPPED (a loop guard held) or, when its
    `when` is false, the node's `default` as its output; else `calls` are the rendered slot values of
    each call it makes: one, or one per element of a foreach node (`mapped`), whose result is then
    `map_result` of the calls' results in element order.
    """

    skip: Any = None
    calls: tuple[tuple[Any, ...], ...] = ()
    mapped: bool = False


def instance_work(
    wf: WorkflowGraph,
    node: GraphNode,
    row: Mapping[str, Any],
    results: Mapping[str, Any],
    values: tuple[Any, ...] | None = None,
    render_error: str | None = None,
) -> InstanceWork:
    """The one reading of an instance's loop guards, `when` and `foreach` (Processor, serial baseline and
    the benchmark's systems). `values` are its slot values when consolidation rendered them already,
    `render_error` why consolidation could not. Raises HaloError (a TemplateRenderError naming the node
    when rendering fails here): the row's error, under the node's on_error."""
    if node.guards and wf.skipped(node, row, results):
        return InstanceWork(skip=SKIPPED)
    if node.spec.when is not None and not wf.condition(node, row, results):
        return InstanceWork(skip=stand_in_result(node, node.spec.default))
    if render_error is not None:
        raise HaloError(render_error)
    if node.spec.foreach is None:
        return InstanceWork(calls=(values if values is not None else render_values(wf, node, row, results),))
    items = wf.items(node, row, results)
    limit = node.spec.max_items
    if len(items) > limit:
        if not node.spec.truncate:
            detail = f"gave {len(items)} elements, more than max_items={limit} (truncate: true runs the first {limit})"
            raise TemplateRenderError(node.id, "foreach", detail)
        items = items[:limit]
    element = node.spec.as_
    calls = tuple(render_values(wf, node, row, results, {element: item}) for item in items)
    return InstanceWork(calls=calls, mapped=True)


def map_result(node: GraphNode, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A foreach node's result: each field the list of its elements' values, in element order."""
    fields = list(results[0]) if results else sorted(output_fields(node.spec))
    return {name: [result.get(name) for result in results] for name in fields}


def render_values(
    wf: WorkflowGraph,
    node: GraphNode,
    row: Mapping[str, Any],
    results: Mapping[str, Any],
    element: Mapping[str, Any] | None = None,
) -> tuple:
    """The rendered slot values of one instance (raises TemplateRenderError naming this node); `element`
    binds a foreach node's element under its `as` name."""
    try:
        context = wf.context(node, row, results)
        if element is not None:
            context.update(element)
        return wf.template(node).render(context)
    except TemplateRenderError as exc:
        if exc.node != node.id:
            raise TemplateRenderError(node.id, exc.field, exc.detail) from exc
        raise


def llm_prompt(node: GraphNode, values: tuple) -> list[dict[str, str]]:
    assert isinstance(node.spec, LlmNode)
    return chat_messages(node.spec, values)


def output_format(spec: LlmNode) -> OutputFormat | None:
    """The node's structured output as the engine takes it (None: free text)."""
    if spec.choices is not None:
        return OutputFormat.of_choices(spec.choices)
    if spec.regex is not None:
        return OutputFormat.of_regex(spec.regex)
    if spec.json_schema is not None:
        return OutputFormat.of_json(spec.json_schema)
    return None


def sampling_params(node: GraphNode) -> SamplingParams:
    """The one place a node's request parameters are made (Processor, serial baseline, bench systems):
    sample 0's when the node draws `n` samples (`request_params` gives all of them)."""
    spec = node.spec
    assert isinstance(spec, LlmNode)
    return SamplingParams(
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        seed=spec.seed,
        stop=spec.stop,
        output_format=output_format(spec),
        logprobs=0 if spec.logprobs else None,
        choice_mode="score" if spec.scored else "greedy",
        length_normalized=spec.length_normalized and spec.scored,
    )


def request_params(node: GraphNode) -> list[SamplingParams]:
    """The params of each of the node's `n` engine requests: sample i seeded `seed + i` (the worker's
    `sample_params`, so every path draws the same samples)."""
    first = sampling_params(node)
    n = node.spec.n if isinstance(node.spec, LlmNode) else 1
    return [sample_params(first, i) for i in range(n)]


def replies_result(node: GraphNode, replies: Sequence[LlmReply | str]) -> dict[str, Any]:
    """An llm node's result from its engine replies, one per sample (a str: a reply known by its text only).

    n = 1: `llm_result` of the one reply. n > 1: the same fields, each a list of the samples' values in
    sample order (`output`, `text`, `json`, `logprobs`, `confidence`); a sample that fails its format
    fails the whole node, with "sample i of n: " before the sample's error.
    """
    spec = node.spec
    assert isinstance(spec, LlmNode)
    samples = [LlmReply(r) if isinstance(r, str) else r for r in replies]
    if len(samples) != spec.n:
        raise ValueError(f"node '{node.id}' draws n={spec.n} samples but {len(samples)} replies came back")
    results = []
    for i, reply in enumerate(samples):
        try:
            results.append(
                llm_result(
                    node,
                    reply.text,
                    finish_reason=reply.finish_reason,
                    format_error=reply.format_error,
                    logprobs=reply.token_logprobs,
                    choice_scores=reply.choice_scores,
                )
            )
        except ValueError as exc:
            if spec.n == 1:
                raise
            raise ValueError(f"sample {i} of {spec.n}: {exc}") from None
    if spec.n == 1:
        return results[0]
    return {name: [result[name] for result in results] for name in results[0]}


def llm_result(
    node: GraphNode,
    text: str,
    *,
    finish_reason: str | None = None,
    format_error: str | None = None,
    logprobs: Sequence[float] = (),
    choice_scores: ChoiceScores | None = None,
) -> dict[str, Any]:
    """One sample's result: `output` and `text` are the text; with a json_schema `output` and `json`
    are the parsed document; with `logprobs: true`, `logprobs` are the generated tokens' log-probabilities.
    A choices node with `logprobs: true` or `choice_mode: score` has `confidence`, a scored one `scores`
    and `probabilities` (by option); docs/structured_outputs.md, "In workflows", defines them.

    A structured output the engine reports incomplete (`format_error`, e.g. "json output truncated at
    max_tokens=64"), or that is not of the node's format, raises ValueError: the row's error, under the
    node's on_error. The text is checked here too, not only trusted, so a result from any engine (or
    one cut at `finish_reason` "length" by an engine that says no more) holds to the format.
    """
    spec = node.spec
    assert isinstance(spec, LlmNode)
    extra: dict[str, Any] = {"logprobs": list(logprobs)} if spec.logprobs else {}
    if not spec.structured:
        return {"output": text, "text": text, **extra}
    if spec.scored:
        if choice_scores is None:
            raise ValueError("choice_mode: score, but the engine's reply carries no option scores")
        text = choice_scores.chosen_text
    if format_error is not None:
        raise ValueError(format_error)
    check = OutputCheck(spec.choices, spec.regex, spec.json_schema)
    checked = check_output(check, text, finish_reason == "length", spec.max_tokens)
    if checked.error is not None:
        raise ValueError(checked.error)
    if spec.json_schema is not None:
        return {"output": checked.value, "json": checked.value, "text": text, **extra}
    if choice_scores is not None and spec.scored:
        options = [o.text for o in choice_scores.options]
        return {
            "output": text,
            "text": text,
            **extra,
            "confidence": choice_scores.confidence,
            "scores": dict(zip(options, choice_scores.scores, strict=True)),
            "probabilities": dict(zip(options, choice_scores.probabilities, strict=True)),
        }
    if spec.choices is not None and spec.logprobs:
        # The chosen path's probability under the masked (constrained) distribution; no logprobs (a
        # reply known by its text only) leaves it unknown.
        extra["confidence"] = math.exp(math.fsum(logprobs)) if logprobs else None
    return {"output": text, "text": text, **extra}


def fallback_result(node: GraphNode) -> dict[str, Any]:
    """What an instance yields when it fails under `on_error: default`: `stand_in_result` of `fallback`."""
    return stand_in_result(node, node.spec.fallback)


def stand_in_result(node: GraphNode, value: Any) -> dict[str, Any]:
    """A result for an instance that produced none (a failure under `on_error: default`, a false `when`):
    `value` as its output (and `json`); `text` its string ("" for none); `logprobs` [], `confidence`
    None, `scores` and `probabilities` {}. With n > 1, `output`/`json` are `value` and the other fields []."""
    kind = node.kind
    if isinstance(node.spec, LlmNode):
        spec = node.spec
        many = spec.n > 1
        result: dict[str, Any] = {"output": value, "text": [] if many else "" if value is None else str(value)}
        fields = output_fields(spec)
        if "json" in fields:
            result["json"] = value  # `fallback` stands for the parsed document
        if "logprobs" in fields:
            result["logprobs"] = []
        if "confidence" in fields:
            result["confidence"] = [] if many else None
        for name in ("scores", "probabilities"):
            if name in fields:
                result[name] = {}
        return result
    if kind == "sql":
        return {"output": value, "rows": value if isinstance(value, list) else [], "columns": []}
    if kind == "http":
        return {"output": value, "status": None, "json": None, "text": None, "headers": {}}
    if kind == "rule":
        return {"output": value, "matched": False}
    return {"output": value}


def row_outputs(wf: WorkflowGraph, row: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
    """The workflow's `outputs` for one row; a value whose node did not run (failed, skipped) is None."""
    return {binding.name: output_value(binding, row, results) for binding in wf.outputs}


def output_value(binding: OutputBinding, row: Mapping[str, Any], results: Mapping[str, Any]) -> Any:
    if binding.alternatives:
        values = (output_value(alternative, row, results) for alternative in binding.alternatives)
        return next((value for value in values if value is not None), None)
    if binding.input is not None:
        value: Any = row.get(binding.input)
    else:
        assert binding.binding is not None
        value = next((results[c] for c in binding.binding.candidates if c in results), None)
    for part in binding.path:
        if value is None:
            return None
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list | tuple) and part.lstrip("-").isdigit():
            index = int(part)
            value = value[index] if -len(value) <= index < len(value) else None
        else:
            value = getattr(value, part, None)
    return value
