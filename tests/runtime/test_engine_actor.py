"""The body of a Ray worker, in this process: `EngineActor`'s loop thread streams jobs in and out.

A job submitted while a batch decodes joins it between two steps (it finishes long before the job
that was running), `cancel` aborts a run's requests in the actor and drops its later jobs, jobs wait
for the prefix they import and then reuse it, and the loop thread sleeps while there is nothing to
do. The Ray transport around it is tested in test_two_workers.py and test_ray_cluster.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from halo.engine import SamplingParams
from halo.runtime.engine_actor import EngineActor
from halo.runtime.llm_worker import EngineRecipe, LLMDone, LLMJob
from tiny_default_model import SOURCE, build_tiny_default

ENGINE = {"kv_blocks": 512, "swap_space_gb": 0, "num_threads": 1}
LONG = SamplingParams(max_tokens=80, ignore_eos=True)  # decodes for 80 steps whatever it samples
SHORT = SamplingParams(max_tokens=2)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_default(tmp_path_factory.mktemp("tiny") / "tiny")


def _actor(tiny_model: Path, index: int = 0) -> EngineActor:
    actor = EngineActor(index, EngineRecipe({"dtype": "fp32", **ENGINE}, models={SOURCE: str(tiny_model)}), 1, 2)
    actor.preload(SOURCE)
    return actor


@pytest.fixture
def actor(tiny_model: Path) -> Iterator[EngineActor]:
    actor = _actor(tiny_model)
    yield actor
    actor.close()


def _ids(actor: EngineActor, text: str, system: str = "You answer briefly.") -> list[int]:
    engine = actor.worker.engines.engines[SOURCE]
    return engine.encode_prompt([{"role": "system", "content": system}, {"role": "user", "content": text}])


def _until(actor: EngineActor, phys: int) -> list[LLMDone]:
    """Drain until job `phys` has come back; everything drained, in arrival order."""
    seen: list[LLMDone] = []
    while all(d.phys != phys for d in seen):
        batch = actor.drain(timeout_s=60.0)
        assert batch, "the actor returned nothing within a minute"
        seen.extend(d for d, _ in batch)
    return seen


def test_a_job_submitted_mid_batch_joins_the_running_batch(actor: EngineActor):
    engine = actor.worker.engines.engines[SOURCE]
    long_ids, short_ids, late_ids = _ids(actor, "Tell a story."), _ids(actor, "Hi."), _ids(actor, "Count to three.")
    actor.submit([LLMJob(1, SOURCE, long_ids, LONG, owner=1), LLMJob(2, SOURCE, short_ids, SHORT, owner=1)])
    first = _until(actor, 2)
    assert [d.phys for d in first] == [2]  # the long job is still decoding
    actor.submit([LLMJob(3, SOURCE, late_ids, SHORT, owner=1)])  # sent while job 1 decodes
    second = _until(actor, 3)
    assert [d.phys for d in second] == [3]  # it joined the batch: it did not wait for job 1 to end
    assert actor.inflight() == 1
    [last] = _until(actor, 1)
    assert last.error is None and last.generated_tokens == LONG.max_tokens
    # Batched in the actor, each answer equals the same request run alone (fp32 greedy).
    for done, ids, params in ((first[0], short_ids, SHORT), (second[0], late_ids, SHORT), (last, long_ids, LONG)):
        assert done.text == engine.generate([ids], params)[0].text


def test_cancel_aborts_a_runs_requests_in_the_actor_and_drops_its_later_jobs(actor: EngineActor):
    ids = _ids(actor, "Tell a story.")
    actor.submit([LLMJob(1, SOURCE, ids, LONG, owner=5), LLMJob(2, SOURCE, _ids(actor, "Hi."), SHORT, owner=6)])
    assert [d.owner for d in _until(actor, 2)] == [6]
    actor.cancel(5, seq=2)
    assert actor.inflight() == 0  # run 5's decoding request is gone
    # A submit the driver numbered before the cancel, arriving after it: run 5's job never runs.
    actor.submit([LLMJob(3, SOURCE, ids, SHORT, owner=5), LLMJob(4, SOURCE, ids, SHORT, owner=7)], seq=1)
    assert [(d.phys, d.owner) for d in _until(actor, 4)] == [(4, 7)]
    assert actor.inflight() == 0
    actor.submit([LLMJob(5, SOURCE, ids, SHORT, owner=5)], seq=3)  # numbered after it (an owner id reused)
    assert [(d.phys, d.owner, d.error) for d in _until(actor, 5)] == [(5, 5, None)]


def test_an_idle_loop_thread_sleeps(actor: EngineActor):
    actor.submit([LLMJob(1, SOURCE, _ids(actor, "Hi."), SHORT)])
    _until(actor, 1)
    assert actor.inflight() == 0
    before = actor.iterations
    assert actor.drain(timeout_s=0.3) == []  # a spinning loop would iterate thousands of times meanwhile
    assert actor.iterations == before


def test_a_job_waits_for_the_prefix_it_imports_and_reuses_it(tiny_model: Path):
    system = "You are a careful travel writer who answers in plain words. " * 6  # several whole KV blocks
    source, target = _actor(tiny_model, 0), _actor(tiny_model, 1)
    try:
        parent = _ids(source, "City: Oslo", system)
        child = _ids(source, "City: Oslo. One more fact:", system)
        source.submit([LLMJob(1, SOURCE, parent, SHORT)])
        _until(source, 1)
        prefix = source.export_prefix(SOURCE, child)
        assert prefix is not None and prefix.num_tokens >= 64
        arrived: Future = Future()
        target.submit([LLMJob(2, SOURCE, child, SHORT)], imports=[(SOURCE, arrived)])
        assert target.inflight() == 1 and target.drain(timeout_s=0.2) == []  # staged until its import lands
        arrived.set_result(prefix)
        [done] = _until(target, 2)
        assert target.imported_tokens() == prefix.num_tokens
        assert done.cached_tokens >= prefix.num_tokens  # the imported blocks were not prefilled again
        assert done.text == source.worker.engines.engines[SOURCE].generate([child], SHORT)[0].text
        failed: Future = Future()  # an export that failed (its actor died): the job prefills instead
        target.submit([LLMJob(3, SOURCE, _ids(target, "Lima"), SHORT)], imports=[(SOURCE, failed)])
        failed.set_exception(RuntimeError("the exporting actor died"))
        [done] = _until(target, 3)
        assert done.error is None and target.imported_tokens() == prefix.num_tokens
    finally:
        source.close()
        target.close()
