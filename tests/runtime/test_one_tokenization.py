"""One tokenization: each prompt of a run is encoded once, and the ids the planner encoded are the engine's.

The runs use a tiny random Llama checkpoint that carries the default model's real tokenizer (its
vocab, merges, special tokens and chat template), so the tokenizer is the one production runs with
while the model costs nothing to load. Every tokenization starts with the chat template, so counting
`render_chat` per message list counts tokenizations; the engine's own path (`encode` of a rendered
text) must never run: it receives token ids only.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import halo
import pytest
from halo.engine import SamplingParams
from halo.plan import WhitespaceTokenizer, consolidate
from halo.plan.emit import emit
from halo.plan.prompt_tokens import _SENTINEL, chat_messages
from halo.runtime.engine_actor import EngineActor
from halo.runtime.llm_worker import EngineRecipe, LLMJob
from halo.runtime.processor import Processor
from halo.runtime.tools import ToolRunner
from halo.spec import Workflow
from halo.spec.nodes import LlmNode
from tiny_default_model import SOURCE, build_tiny_default  # SOURCE: the default model, mapped to the tiny one

ENGINE = {"kv_blocks": 512, "swap_space_gb": 0, "num_threads": 1}
# Texts that make the planner's piecewise encoder work: special-token text, digits, unicode, spacing.
WORDS = ["apple", "Pear 42", "fig <|im_end|> tree", "  spaced  out ", "naïve café", "x" * 40, "1234567890", "kiwi"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_default(tmp_path_factory.mktemp("tiny") / "tiny", context_length=256)  # a test overflows it


@pytest.fixture(scope="module")
def app(tiny_model: Path):
    with halo.compile(_workflow(), models={SOURCE: str(tiny_model)}, dtype="fp32", engine_options=ENGINE) as app:
        yield app


def _workflow() -> Workflow:
    # `ask` renders at consolidation (the planner encodes it); `echo` reads `ask`'s reply, so it is
    # deferred and encoded at dispatch.
    return (
        Workflow("one-tokenization")
        .inputs("word")
        .llm("ask", system="You name fruit.", prompt="Name a fruit like {{ word }}.", max_tokens=5)
        .llm("echo", prompt="Repeat: {{ ask.output }} ({{ word }})", max_tokens=4)
        .outputs(ask="ask.output", echo="echo.output")
    )


def _rows() -> list[dict[str, str]]:
    return [{"word": w} for w in [*WORDS, *WORDS[:3]]]  # repeats: equal requests are merged, not re-encoded


class _Counting:
    """Counts, on one tokenizer instance, chat renderings per message list and whole-text encodes."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.rendered: Counter[str] = Counter()
        self.encoded: list[str] = []  # texts given to encode() (the engine's path)
        self._render, self._encode = tokenizer.render_chat, tokenizer.encode

    def __enter__(self) -> _Counting:
        def render_chat(messages: list[dict[str, str]], *args: Any, **kw: Any) -> str:
            self.rendered[json.dumps(messages)] += 1
            return self._render(messages, *args, **kw)

        def encode(text: str) -> list[int]:
            self.encoded.append(text)
            return self._encode(text)

        self.tokenizer.render_chat, self.tokenizer.encode = render_chat, encode
        return self

    def __exit__(self, *exc: object) -> None:
        del self.tokenizer.render_chat, self.tokenizer.encode  # the class's methods again


def _received(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The prompts `engine.add_request` receives from now on."""
    prompts: list[Any] = []
    add = engine.add_request

    def add_request(prompt: Any, *args: Any, **kw: Any) -> str:
        prompts.append(prompt)
        return add(prompt, *args, **kw)

    monkeypatch.setattr(engine, "add_request", add_request)
    return prompts


def _expected_messages(result: Any, rows: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """The chat requests the run had to send: one per distinct request of each node."""
    wf = _workflow()
    ask, echo = (wf.graph.node(n).spec for n in ("ask", "echo"))
    assert isinstance(ask, LlmNode) and isinstance(echo, LlmNode)
    asks = {
        json.dumps(m): m
        for r in rows
        for m in [chat_messages(ask, ("You name fruit.", f"Name a fruit like {r['word']}."))]
    }
    echoes = {
        json.dumps(m): m
        for r, out in zip(rows, result.outputs, strict=True)
        for m in [chat_messages(echo, (f"Repeat: {out['ask']} ({r['word']})",))]
    }
    return [*asks.values(), *echoes.values()]


def test_each_prompt_is_encoded_once_and_the_engine_gets_the_planners_ids(app, monkeypatch):
    rows = _rows()
    engine = app.engine()
    tokenizer = engine.tokenizer
    assert app._tokenizers[SOURCE] is tokenizer  # the planner encodes with the engine's own tokenizer
    received = _received(engine, monkeypatch)
    with _Counting(tokenizer) as counts:
        result = app.run(rows)
    assert result.errors == []
    expected = _expected_messages(result, rows)
    # Every distinct request went through the chat template exactly once: in the planner (ask) or
    # at dispatch (echo); the engine's own encoding never ran and it received token ids only.
    # (The planner also renders the deferred node's literal head, up to a marker, to count the tokens
    # every one of its prompts starts with: an estimate, not a prompt.)
    prompts = Counter({m: n for m, n in counts.rendered.items() if _SENTINEL not in json.loads(m)[-1]["content"]})
    assert prompts == Counter({json.dumps(m): 1 for m in expected}), counts.rendered
    assert counts.encoded == []
    assert received and all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in received)
    # The ids it received are its own encoding of the messages (what it computed before).
    assert sorted(received) == sorted(engine.encode_prompt(m) for m in expected)


def test_the_planners_ids_equal_the_engines_encoding(app):
    engine = app.engine()
    graph = app.plan(_rows()).graph
    ask = graph.workflow.node("ask")
    assert isinstance(ask.spec, LlmNode)
    planned = graph.physical.prompt_ids
    rendered = [phys for phys in range(len(graph.physical)) if graph.physical.node[phys] == "ask"]
    assert sorted(planned) == rendered and len(rendered) == len(WORDS)  # more than the encoder's checked sample
    for phys in rendered:
        values = graph.physical.values[phys]
        assert values is not None
        assert planned[phys] == engine.encode_prompt(chat_messages(ask.spec, values)), graph.physical.row[phys]


def test_greedy_outputs_equal_those_of_engine_side_encoding(app):
    rows = _rows()
    engine = app.engine()
    engine.reset_prefix_cache()
    travelled = app.run(rows)
    # The same plan run by a Processor that knows no tokenizer: it sends messages, the engine encodes.
    planned = app.plan(rows)
    execution = emit(planned.graph, planned.plan, 1, dict(planned.kv_parents))
    engine.reset_prefix_cache()
    with ToolRunner(app.workflow) as tools:
        outcome = Processor(planned.graph, rows, execution, app._workers, tools).run()
    assert [outcome.outputs[r] for r in range(len(rows))] == travelled.outputs


def test_ids_encoded_with_another_tokenizer_stay_home(app):
    """A graph consolidated with a tokenizer that is not the engine's: its ids are not sent; each
    prompt is encoded once, at dispatch, with the engine's tokenizer."""
    rows = _rows()[:4]
    foreign = consolidate(app.graph, rows, WhitespaceTokenizer())
    assert foreign.physical.prompt_ids  # the planner did encode them, with its own tokenizer
    planned = app.plan(rows)
    execution = emit(foreign, planned.plan, 1, {})
    tokenizer = app.engine().tokenizer
    with _Counting(tokenizer) as counts, ToolRunner(app.workflow) as tools:
        outcome = Processor(foreign, rows, execution, app._workers, tools, tokenizers=app._tokenizers).run()
    assert outcome.errors == {}
    assert set(counts.rendered.values()) == {1} and len(counts.rendered) == 8 and counts.encoded == []
    assert [outcome.outputs[r] for r in range(len(rows))] == app.run(rows).outputs


def test_a_prompt_over_the_context_window_is_its_rows_located_error(app):
    long = "word " * 300  # over the tiny model's 256-token window
    rows = [{"word": "apple"}, {"word": long}]
    result = app.run(rows)
    assert [(e.row, e.node) for e in result.errors] == [(1, "ask")]
    message = result.errors[0].message
    assert message.startswith("request p") and "tokens but the context window of tiny is 256" in message
    assert result.outputs[0]["echo"] is not None and result.outputs[1] == {"ask": None, "echo": None}


def test_an_engine_actor_runs_jobs_and_moves_prefixes_by_token_ids(tiny_model):
    """The body of a Ray worker, in this process: jobs and prefix exports carry ids, as Ray pickles them."""
    actor = EngineActor(0, EngineRecipe({"dtype": "fp32", **ENGINE}, models={SOURCE: str(tiny_model)}), 1, 2)
    try:
        actor.preload(SOURCE)
        engine = actor.worker.engines.engines[SOURCE]
        messages = [{"role": "system", "content": "Rules. " * 40}, {"role": "user", "content": "Go."}]
        ids = engine.encode_prompt(messages)
        params = SamplingParams(max_tokens=3)
        actor.submit([LLMJob(7, SOURCE, ids, params, owner=2)])
        [(done, _)] = actor.drain(timeout_s=60.0)
        assert (done.phys, done.owner, done.error, done.prompt_tokens) == (7, 2, None, len(ids))
        assert done.text == engine.generate([messages], params)[0].text  # the actor's loop is idle now
        prefix = actor.export_prefix(SOURCE, ids)
        assert prefix is not None and list(prefix.token_ids) == ids[: prefix.num_tokens] and prefix.num_tokens >= 16
    finally:
        actor.close()
