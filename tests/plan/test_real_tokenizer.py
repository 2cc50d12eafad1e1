"""With the engine's SmolLM2 tokenizer: piecewise encoding is exact and the counts add up."""

from __future__ import annotations

import pytest
from halo.plan import consolidate
from halo.plan.prompt_tokens import chat_messages
from halo.spec import Workflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer():
    try:
        from halo.engine.gguf_checkpoint import load_gguf_tokenizer
        from halo.engine.model_source import resolve_model_path

        return load_gguf_tokenizer(resolve_model_path("smollm2-135m"))
    except Exception as exc:  # noqa: BLE001 - no model file here: nothing to compare against
        pytest.skip(f"SmolLM2 tokenizer unavailable: {exc}")


def test_prefix_counts_match_whole_text_encoding(tokenizer):
    wf = Workflow.from_yaml(
        """\
name: t
inputs: [q]
nodes:
  - {id: a, kind: llm, system: "You answer briefly. <|im_end|> is just text here.", prompt: "Q: {{ q }}"}
  - {id: b, kind: llm, prompt: "Translate: {{ q }}  <file_sep>"}
"""
    )
    questions = ["What is 2+2?", "  spaced  ", "What is 2+2?", "naïve café 12345", "<|im_start|>x"]
    rows = [{"q": q} for q in questions]
    graph = consolidate(wf, rows, tokenizer)
    expected = 0
    for physical in graph.physical:
        text = tokenizer.render_chat(chat_messages(wf.graph.node(physical.node).spec, physical.values))
        assert physical.prompt_tokens == len(tokenizer.encode(text))
        expected += physical.prompt_tokens * physical.fan_out
    assert graph.prompt_tokens_total == expected
