"""BatchScheduler policy without a model: token budget, chunking, FCFS admission, preemption order."""

from __future__ import annotations

from halo.engine.batch_scheduler import BatchScheduler
from halo.engine.block_manager import BlockManager
from halo.engine.sampling_params import SamplingParams
from halo.engine.sequence import Sequence, SequenceStatus


def _seq(i: int, n: int, first: int = 100) -> Sequence:
    return Sequence(f"r{i}", list(range(first + i * 1000, first + i * 1000 + n)), SamplingParams(max_tokens=50),
                    arrival=i, max_len=10_000)


def _advance(batch, sampled_token: int = 7) -> None:
    """What the engine does after a step: computed tokens catch up, finished prefills sample a token."""
    for seq, n in zip(batch.seqs, batch.num_new, strict=True):
        seq.num_computed += n
        if seq.num_computed == seq.num_tokens:
            seq.output_ids.append(sampled_token)


def test_token_budget_chunks_prefill_and_decodes_come_first():
    sched = BatchScheduler(BlockManager(64, 4), max_batch_tokens=10, max_num_seqs=8)
    a, b = _seq(0, 6), _seq(1, 12)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert [(s.request_id, n) for s, n in zip(batch.seqs, batch.num_new, strict=True)] == [("r0", 6), ("r1", 4)]
    _advance(batch)
    batch = sched.schedule()
    # a decodes (1 token, listed first); b continues its prompt with the rest of the budget
    assert [(s.request_id, n) for s, n in zip(batch.seqs, batch.num_new, strict=True)] == [("r0", 1), ("r1", 8)]
    assert batch.num_tokens <= 10


def test_admission_is_fcfs_and_respects_max_num_seqs():
    sched = BatchScheduler(BlockManager(64, 4), max_batch_tokens=100, max_num_seqs=2)
    seqs = [_seq(i, 3) for i in range(4)]
    for s in seqs:
        sched.add(s)
    batch = sched.schedule()
    assert [s.request_id for s in batch.seqs] == ["r0", "r1"]
    assert [s.request_id for s in sched.waiting] == ["r2", "r3"]


def test_preemption_frees_the_newest_and_it_resumes_first():
    bm = BlockManager(6, 4, enable_prefix_cache=False)  # 24 token slots
    sched = BatchScheduler(bm, max_batch_tokens=100, max_num_seqs=8)
    old, new = _seq(0, 8), _seq(1, 8)
    sched.add(old)
    sched.add(new)
    _advance(sched.schedule())  # both prefilled: 2 + 2 blocks, 2 free
    for _ in range(8):  # decode until the pool cannot hold both
        batch = sched.schedule()
        if sched.num_preemptions:
            break
        _advance(batch)
    assert sched.num_preemptions == 1
    assert new.status is SequenceStatus.WAITING and new.block_table == [] and new.num_computed == 0
    assert old.status is SequenceStatus.RUNNING
    assert list(sched.waiting)[0] is new
    assert bm.num_free + sum(len(s.block_table) for s in sched.running) == 6


def test_prefix_in_flight_defers_a_sharing_request_one_step():
    bm = BlockManager(64, 4)
    sched = BatchScheduler(bm, max_batch_tokens=100, max_num_seqs=8)
    shared = list(range(500, 516))
    a = Sequence("a", shared + [1, 2], SamplingParams(), 0, 1000)
    b = Sequence("b", shared + [3, 4], SamplingParams(), 1, 1000)
    sched.add(a)
    sched.add(b)
    first = sched.schedule()
    assert [s.request_id for s in first.seqs] == ["a"]  # b waits for a's blocks
    _advance(first)
    for s in first.seqs:
        bm.publish(s)
    second = sched.schedule()
    assert "b" in [s.request_id for s in second.seqs]
    assert b.num_cached == 16


def test_pending_prompt_tokens_count_chunks_in_progress_and_waiting_prompts_up_to_the_budget():
    sched = BatchScheduler(BlockManager(64, 4), max_batch_tokens=10, max_num_seqs=8)
    a, b = _seq(0, 6), _seq(1, 12)
    sched.add(a)
    sched.add(b)
    assert sched.pending_prompt_tokens() == 10  # 18 waiting, capped by the step's budget
    _advance(sched.schedule())  # a's prompt done (it decodes next), b has 8 left
    assert sched.pending_prompt_tokens() == 8
    _advance(sched.schedule())
    assert sched.pending_prompt_tokens() == 0  # only decodes are left
