"""Planning prices prefill against the engine's live prefix cache: after a batch ran, consolidating it
again counts its prompts' cached blocks (directly, and through an online session's thread)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow
YAML = """
name: notes
inputs: [topic]
nodes:
  - id: note
    kind: llm
    system: "You are a careful assistant who writes short, factual notes for a reference card."
    prompt: "Write one short note about {{ topic }}. Mention where it is found and one fact about it."
    max_tokens: 6
outputs:
  note: note.output
"""
BATCH = [{"topic": "rivers"}, {"topic": "tea"}, {"topic": "owls"}]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import halo

    path = tmp_path_factory.mktemp("warm") / "notes.yaml"
    path.write_text(YAML)
    compiled = halo.compile(path, dtype="fp32")
    yield compiled
    compiled.close()


def _note_counters(app, batch):
    from halo.plan import consolidate

    graph = consolidate(app.graph, batch, app._tokenizers, check=False, warm_prefix=app._warm_prefix)
    return graph.counters["note"], graph


def test_a_batch_that_ran_is_priced_as_cached_up_to_its_full_blocks(app):
    engine = app.engine()
    engine.reset_prefix_cache()
    cold, _ = _note_counters(app, BATCH)
    lengths = app._warm_prefix(app.model_sources[0], [[1, 2, 3] * 20])
    assert lengths == [0]
    app.run(BATCH)
    warm, graph = _note_counters(app, BATCH)
    block = engine.block_manager.block_size
    prompts = [graph.physical.tokens[phys] for phys in range(len(graph.physical.node)) if phys in graph.physical.tokens]
    assert len(prompts) == len(BATCH)
    assert warm.physical_prompt_tokens == cold.physical_prompt_tokens == sum(prompts)
    # every prompt now finds all its full blocks but the last token's in the cache
    assert warm.cached_prompt_tokens == sum((n - 1) // block * block for n in prompts)
    assert warm.cached_prompt_tokens > cold.cached_prompt_tokens
    # a new topic shares the cached system prompt and template head, not the whole prompt
    fresh, _ = _note_counters(app, [{"topic": "volcanoes of the southern hemisphere"}])
    assert 0 < fresh.cached_prompt_tokens < fresh.physical_prompt_tokens


def test_an_online_session_answers_the_cache_question_on_its_thread(app):
    from halo.runtime.online_session import OnlineSession

    app.engine().reset_prefix_cache()
    session = OnlineSession()
    session.start()
    app.attach(session)
    try:
        result = app.run(BATCH)  # runs on the session thread, fills the cache there
        assert not result.errors
        warm, graph = _note_counters(app, BATCH)  # asks the session thread between two steps
        assert warm.cached_prompt_tokens > 0
        assert warm.cached_prompt_tokens <= warm.physical_prompt_tokens - len(BATCH)
    finally:
        app.detach()
        session.close(grace_s=5)
