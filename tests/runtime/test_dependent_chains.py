"""A dependent chain runs without a gap (issue 21): a child node's request joins the engine in the
step right after the one its parent finished in, with no step or poll between them. The real engine
runs (a tiny random model with the default model's tokenizer, tests/tiny_default_model.py); its
`step` is wrapped to record, per step, which requests computed tokens and which finished (the step log), and the run's
timeline must agree: each child was prepared after its parent's reply and before the next step began.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import halo
import pytest
from halo.spec import Workflow
from tiny_default_model import SOURCE, build_tiny_default

ENGINE = {"kv_blocks": 256, "swap_space_gb": 0, "num_threads": 1}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_default(tmp_path_factory.mktemp("tiny") / "tiny")


def _chain(draft_tokens: int = 6) -> Workflow:
    return (
        Workflow("chain")
        .inputs("i", "topic")
        .llm("draft", prompt="Write about {{ topic }}.", max_tokens=draft_tokens)
        .llm("title", prompt="Title {{ i }} for: {{ draft.output }}", max_tokens=3)
        .outputs(title="title.output")
    )


@dataclass
class StepLog:
    """Per engine step: when it began, the requests that computed tokens in it, those that finished."""

    began: list[float] = field(default_factory=list)
    present: list[set[str]] = field(default_factory=list)  # requests the engine held when it began
    computed: list[set[str]] = field(default_factory=list)
    finished: list[set[str]] = field(default_factory=list)

    def first_computed(self, request_id: str) -> int:
        return next(i for i, ids in enumerate(self.computed) if request_id in ids)

    def finished_in(self, request_id: str) -> int:
        return next(i for i, ids in enumerate(self.finished) if request_id in ids)


def _record_steps(engine) -> StepLog:  # noqa: ANN001 - the app's real LLMEngine
    log = StepLog()
    step = engine.step

    def logged_step():  # noqa: ANN202
        running = {rid: (seq, seq.num_computed) for rid, seq in engine._requests.items()}
        log.began.append(time.perf_counter())
        log.present.append(set(running))
        results = step()
        log.computed.append({rid for rid, (seq, before) in running.items() if seq.num_computed > before})
        log.finished.append({r.request_id for r in results})
        return results

    engine.step = logged_step
    return log


def test_a_child_request_joins_the_step_after_its_parent_finished(tiny_model: Path) -> None:
    # Parents finish in different steps: prompts of ~15 to ~200 tokens prefill in chunks of a 64-token
    # step budget (FCFS, ~7 steps for all), and each decodes 12 tokens, so the first parent finishes
    # after every prompt is in; from then on a step holds at most 4 decodes and a child's ~25-token
    # prompt, so a child the Processor adds before step k+1 also computes in step k+1.
    rows = [{"i": i, "topic": f"topic {i} " + "word " * (60 * i)} for i in range(4)]
    options = {**ENGINE, "max_batch_tokens": 64}
    with halo.compile(_chain(12), models={SOURCE: str(tiny_model)}, dtype="fp32", engine_options=options) as app:
        log = _record_steps(app._pool.engine(SOURCE))
        result = app.run(rows)
    assert result.errors == []
    spans = {(s.node, s.phys): s for s in result.timeline}
    parents = sorted(phys for node, phys in spans if node == "draft")
    children = sorted(phys for node, phys in spans if node == "title")
    assert len(parents) == len(children) == len(rows)
    graph = result.planned.graph
    for row in range(len(rows)):
        parent, child = graph.assignment["draft"][row], graph.assignment["title"][row]
        parent_id, child_id = f"p0-{parent}", f"p0-{child}"  # the worker's request ids (owner 0)
        k = log.finished_in(parent_id)
        assert child_id not in log.present[k] and child_id in log.present[k + 1]  # added between k and k+1
        assert log.first_computed(child_id) == k + 1, (row, k, log.first_computed(child_id))
        # the timeline agrees: the child was prepared after its parent's reply, before step k+1 began
        assert spans[("draft", parent)].end <= spans[("title", child)].start < log.began[k + 1]
    # the parents did not all finish in one step: the children followed each one separately
    assert len({log.finished_in(f"p0-{graph.assignment['draft'][r]}") for r in range(len(rows))}) > 1
