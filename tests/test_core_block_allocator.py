"""halo._core.BlockAllocator: reference counts, the free list, and all-or-nothing errors."""

from collections import Counter

import pytest
from halo._core import BlockAllocator, OutOfBlocksError
from hypothesis import given, settings
from hypothesis import strategies as st


def snapshot(alloc: BlockAllocator) -> tuple[int, list[int]]:
    return alloc.num_free, [alloc.refcount(b) for b in range(alloc.num_blocks)]


def test_fresh_allocator_is_all_free():
    alloc = BlockAllocator(4)
    assert alloc.num_blocks == 4
    assert alloc.num_free == 4
    assert [alloc.refcount(b) for b in range(4)] == [0, 0, 0, 0]


@pytest.mark.parametrize("n", [0, -1])
def test_num_blocks_must_be_positive(n):
    with pytest.raises(ValueError):
        BlockAllocator(n)


def test_allocate_hands_out_distinct_blocks_with_one_reference():
    alloc = BlockAllocator(8)
    blocks = alloc.allocate(5)
    assert blocks == [0, 1, 2, 3, 4]
    assert all(alloc.refcount(b) == 1 for b in blocks)
    assert alloc.num_free == 3
    assert alloc.allocate(0) == []
    assert sorted(blocks + alloc.allocate(3)) == list(range(8))
    assert alloc.num_free == 0


def test_can_allocate():
    alloc = BlockAllocator(3)
    assert alloc.can_allocate(0)
    assert alloc.can_allocate(3)
    assert not alloc.can_allocate(4)
    alloc.allocate(2)
    assert alloc.can_allocate(1)
    assert not alloc.can_allocate(2)
    with pytest.raises(ValueError):
        alloc.can_allocate(-1)


def test_out_of_blocks_allocates_nothing():
    alloc = BlockAllocator(4)
    alloc.allocate(3)
    before = snapshot(alloc)
    with pytest.raises(OutOfBlocksError, match="only 1 of 4 free"):
        alloc.allocate(2)
    assert snapshot(alloc) == before
    assert issubclass(OutOfBlocksError, RuntimeError)
    assert alloc.allocate(1) == [3]


def test_allocate_negative_is_a_value_error():
    with pytest.raises(ValueError):
        BlockAllocator(2).allocate(-1)


def test_block_returns_to_free_list_only_when_last_reference_goes():
    alloc = BlockAllocator(2)
    [b] = alloc.allocate(1)
    alloc.incref([b, b])
    assert alloc.refcount(b) == 3
    alloc.free([b])
    alloc.free([b])
    assert alloc.refcount(b) == 1
    assert alloc.num_free == 1
    alloc.free([b])
    assert alloc.refcount(b) == 0
    assert alloc.num_free == 2


def test_freed_blocks_are_reused_most_recent_first():
    alloc = BlockAllocator(4)
    blocks = alloc.allocate(4)
    alloc.free([blocks[1], blocks[3]])
    assert alloc.allocate(2) == [blocks[3], blocks[1]]


def test_repeated_id_in_free_is_one_reference_each():
    alloc = BlockAllocator(2)
    [b] = alloc.allocate(1)
    alloc.incref([b])
    alloc.free([b, b])
    assert alloc.refcount(b) == 0
    assert alloc.num_free == 2


def test_double_free_is_rejected():
    alloc = BlockAllocator(2)
    [b] = alloc.allocate(1)
    alloc.free([b])
    with pytest.raises(ValueError, match="no reference left"):
        alloc.free([b])
    assert alloc.num_free == 2


def test_free_checks_every_id_before_changing_anything():
    alloc = BlockAllocator(4)
    a, b = alloc.allocate(2)
    before = snapshot(alloc)
    for bad in ([a, b, 3], [a, 99], [a, -1], [b, b], [a, b, a]):
        with pytest.raises(ValueError):
            alloc.free(bad)
        assert snapshot(alloc) == before
    # The free list was restored too: the next allocation is unaffected.
    assert alloc.allocate(2) == [2, 3]


def test_incref_checks_every_id_before_changing_anything():
    alloc = BlockAllocator(4)
    a, b = alloc.allocate(2)
    before = snapshot(alloc)
    for bad in ([a, 2], [b, 4], [-1]):
        with pytest.raises(ValueError):
            alloc.incref(bad)
        assert snapshot(alloc) == before


@pytest.mark.parametrize("block", [-1, 3, 2**40])
def test_refcount_of_bad_id(block):
    with pytest.raises(ValueError, match="out of range"):
        BlockAllocator(3).refcount(block)


def test_repr():
    assert repr(BlockAllocator(3)) == "BlockAllocator(num_blocks=3, num_free=3)"


ops = st.lists(
    st.one_of(
        st.tuples(st.just("allocate"), st.integers(0, 5)),
        st.tuples(st.just("incref"), st.lists(st.integers(-1, 8), max_size=4)),
        st.tuples(st.just("free"), st.lists(st.integers(-1, 8), max_size=4)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_matches_a_counting_model(ops):
    """Every call either succeeds like a plain reference counter or fails leaving no trace."""
    alloc = BlockAllocator(8)
    counts: Counter[int] = Counter()
    for op, arg in ops:
        if op == "allocate":
            free = 8 - len(+counts)
            if arg > free:
                with pytest.raises(OutOfBlocksError):
                    alloc.allocate(arg)
            else:
                got = alloc.allocate(arg)
                assert len(set(got)) == arg and not any(counts[b] for b in got)
                counts.update(got)
        else:
            wanted = Counter(arg)
            valid = all(0 <= b < 8 and counts[b] > 0 for b in arg)
            if op == "free":
                valid = valid and all(counts[b] >= k for b, k in wanted.items())
            if not valid:
                with pytest.raises(ValueError):
                    getattr(alloc, op)(arg)
            else:
                getattr(alloc, op)(arg)
                if op == "incref":
                    counts.update(arg)
                else:
                    counts.subtract(arg)
        assert [alloc.refcount(b) for b in range(8)] == [counts[b] for b in range(8)]
        assert alloc.num_free == 8 - len(+counts)
