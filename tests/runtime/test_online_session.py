"""Runs sharing one `OnlineSession` on the real model: a second run's first llm node enters the engine
while the first run still decodes, outputs equal a lone `app.run` (greedy fp32), an old run is never
starved by newer ones, an equal request in flight is joined instead of recomputed, and closing the
session cancels what is left with `RunCancelled`."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.slow
CHAIN_YAML = """
name: chain
inputs: [topic]
nodes:
  - id: first
    kind: llm
    prompt: "Write one sentence about {{ topic }}."
    max_tokens: {tokens}
  - id: second
    kind: llm
    prompt: "Shorten this: {{ first.output }}"
    max_tokens: {tokens}
outputs:
  first: first.output
  second: second.output
"""


def _compile(tmp_path, tokens: int, **options):
    import halo

    path = tmp_path / f"chain{tokens}.yaml"
    path.write_text(CHAIN_YAML.replace("{tokens}", str(tokens)))
    # No persistent result cache: these runs repeat their batches to watch the session run them.
    return halo.compile(path, dtype="fp32", cache=False, **options)


def _run_together(app, batches, until=lambda progress: progress.llm_in_flight > 0):
    """Each batch on its own thread through the attached session; the next starts only once the
    previous run's progress (reported from the session's loop) satisfies `until` (default: its llm
    requests are in the engine), so the order of events is the test's, not the machine's speed."""
    with ThreadPoolExecutor(len(batches)) as pool:
        futures = []
        for batch in batches:
            reached = threading.Event()

            def progress(p, reached=reached):
                if until(p):
                    reached.set()

            futures.append(pool.submit(app.run, batch, on_progress=progress))
            while not reached.wait(0.05):  # a run that ends before `until` holds has nothing to overlap
                if futures[-1].done():
                    break
        return [f.result() for f in futures]


def test_second_run_overlaps_the_first_and_outputs_equal_app_run(tmp_path):
    from halo.runtime.online_session import OnlineSession

    app = _compile(tmp_path, 24)
    first = [{"topic": "rivers"}, {"topic": "tea"}]
    second = [{"topic": "owls"}, {"topic": "maps"}]
    expected = [app.run(first).outputs, app.run(second).outputs]  # alone, before any session
    session = OnlineSession()
    session.start()
    app.attach(session)
    try:
        results = _run_together(app, [first, second])
    finally:
        app.detach()
        session.close(30)
    one, two = results
    first_end = max(s.end for s in one.timeline)
    second_llm_start = min(s.start for s in two.timeline if s.kind == "llm")
    assert second_llm_start < first_end, "the second run waited for the first to finish"
    assert [one.outputs, two.outputs] == expected
    app.close()


def test_an_old_run_is_not_starved_by_newer_ones(tmp_path):
    """One request in flight at a time: with oldest-first dispatch the old run's second node runs before
    any newer run's node that became ready meanwhile, so the old run ends before all the newer ones."""
    from halo.runtime.online_session import OnlineSession

    app = _compile(tmp_path, 6, max_inflight=1)
    session = OnlineSession()
    session.start()
    app.attach(session)
    try:
        batches = [[{"topic": f"topic {i}"}] for i in range(5)]
        results = _run_together(app, batches, until=lambda progress: True)  # arrived, in order
    finally:
        app.detach()
        session.close(30)
    ends = [max(s.end for s in r.timeline) for r in results]
    assert ends[0] < min(ends[1:]), ends
    assert all(not r.errors for r in results)
    app.close()


def test_an_equal_request_in_flight_is_joined_not_recomputed(tmp_path):
    from halo.runtime.online_session import OnlineSession

    app = _compile(tmp_path, 16)
    rows = [{"topic": "bread"}]
    expected = app.run(rows).outputs
    session = OnlineSession()
    session.start()
    app.attach(session)
    try:
        one, two = _run_together(app, [rows, rows])
    finally:
        app.detach()
        session.close(30)
    assert one.outputs == two.outputs == expected
    assert one.stats.llm_calls_executed + two.stats.llm_calls_executed < 4  # some of run two joined run one
    app.close()


def test_closing_the_session_cancels_runs_left_with_run_cancelled(tmp_path):
    from halo.runtime.online_session import OnlineSession, RunCancelled

    app = _compile(tmp_path, 200)
    session = OnlineSession()
    session.start()
    app.attach(session)
    outcome: list[BaseException | None] = []

    decoding = threading.Event()

    def run() -> None:
        try:
            app.run([{"topic": "the sea"}], on_progress=lambda p: decoding.set() if p.generated_tokens else None)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert decoding.wait(120), "the run never started decoding"
    assert session.close(0.2) is False  # it did not wait for the 200 tokens: the run ends cancelled
    thread.join(10)
    app.detach()
    assert len(outcome) == 1 and isinstance(outcome[0], RunCancelled)
    assert app.engine().has_unfinished() is False  # its requests left the engine
    app.close()
