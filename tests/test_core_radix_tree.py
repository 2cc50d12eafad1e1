"""halo._core.RadixTree: prefix matching, adoption, LRU eviction, errors and lifetime. The random
model-based test of allocator + tree together is in test_core_prefix_cache_model.py."""

import gc

import numpy as np
import pytest
from halo._core import BlockAllocator, RadixTree


def make(num_blocks: int = 16, block_size: int = 2) -> tuple[BlockAllocator, RadixTree]:
    alloc = BlockAllocator(num_blocks)
    return alloc, RadixTree(alloc, block_size)


def cache(alloc: BlockAllocator, tree: RadixTree, tokens: list[int]) -> list[int]:
    """Run one sequence to completion the way the engine does: reuse, allocate, cache, release."""
    matched = tree.match(tokens)
    alloc.incref(matched)
    blocks = matched + alloc.allocate(-(-len(tokens) // tree.block_size) - len(matched))
    tree.insert(tokens, blocks)
    alloc.free(blocks)
    return blocks


def refcounts(alloc: BlockAllocator) -> list[int]:
    return [alloc.refcount(b) for b in range(alloc.num_blocks)]


# --- basics -------------------------------------------------------------------------------------


def test_block_size_must_be_positive():
    alloc = BlockAllocator(2)
    assert RadixTree(alloc, 3).block_size == 3
    for bad in (0, -2):
        with pytest.raises(ValueError):
            RadixTree(alloc, bad)


def test_empty_tree_matches_nothing():
    _, tree = make()
    assert tree.match([1, 2, 3, 4]) == []
    assert tree.match([]) == []
    assert tree.num_cached_blocks == 0
    assert tree.num_evictable == 0
    assert tree.evict(5) == 0


def test_insert_caches_whole_chunks_only():
    alloc, tree = make(block_size=2)
    blocks = alloc.allocate(3)
    assert tree.insert([1, 2, 3, 4, 5], blocks) == 2  # the partial chunk [5] is not cached
    assert tree.num_cached_blocks == 2
    assert refcounts(alloc)[:3] == [2, 2, 1]
    assert tree.match([1, 2, 3, 4, 5, 6]) == blocks[:2]
    assert tree.match([1, 2, 3]) == blocks[:1]
    assert tree.match([1]) == []
    assert tree.match([1, 9, 3, 4]) == []
    assert tree.match([9, 9]) == []


def test_match_takes_no_references():
    alloc, tree = make()
    blocks = cache(alloc, tree, [1, 2, 3, 4])
    before = refcounts(alloc)
    assert tree.match([1, 2, 3, 4]) == blocks
    assert refcounts(alloc) == before


def test_chunks_are_keyed_by_position_in_the_prefix():
    alloc, tree = make(block_size=2)
    a = cache(alloc, tree, [1, 2, 3, 4])
    b = cache(alloc, tree, [3, 4, 1, 2])
    assert tree.num_cached_blocks == 4
    assert tree.match([3, 4, 1, 2]) == b
    assert tree.match([1, 2, 3, 4]) == a
    assert tree.match([1, 2, 1, 2]) == a[:1]


def test_shared_prefix_inserted_by_two_sequences_is_adopted_once():
    alloc, tree = make(block_size=2)
    prefix = [7, 7, 8, 8]
    seq_a, seq_b = prefix + [1, 1], prefix + [2, 2]
    blocks_a = alloc.allocate(3)  # both sequences prefilled before either was cached
    blocks_b = alloc.allocate(3)
    assert tree.insert(seq_a, blocks_a) == 3
    assert tree.insert(seq_b, blocks_b) == 1  # only its own last chunk is new
    assert tree.num_cached_blocks == 4
    assert [alloc.refcount(b) for b in blocks_b] == [1, 1, 2]  # its duplicates are untouched
    alloc.free(blocks_a)
    alloc.free(blocks_b)
    assert alloc.num_free == alloc.num_blocks - 4  # the duplicates went straight back
    assert tree.match(seq_b) == blocks_a[:2] + blocks_b[2:]


def test_reinserting_a_cached_sequence_adopts_nothing():
    alloc, tree = make()
    blocks = cache(alloc, tree, [1, 2, 3, 4])
    before = refcounts(alloc)
    assert tree.insert([1, 2, 3, 4], blocks) == 0
    assert refcounts(alloc) == before


def test_extra_blocks_beyond_the_whole_chunks_are_ignored():
    alloc, tree = make(block_size=4)
    blocks = alloc.allocate(3)
    assert tree.insert(list(range(6)), blocks) == 1
    assert refcounts(alloc)[:3] == [2, 1, 1]


# --- token inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "convert",
    [
        list,
        tuple,
        lambda t: np.array(t, dtype=np.int32),
        lambda t: np.array(t, dtype=np.int64),
        lambda t: np.array(t, dtype=np.uint16),
        lambda t: np.array(t, dtype=np.dtype(">i8")),  # non-native byte order
        lambda t: np.repeat(np.array(t, dtype=np.int32), 2)[::2],  # strided view
        range,
    ],
    ids=["list", "tuple", "int32", "int64", "uint16", "big-endian", "strided", "range"],
)
def test_tokens_accepted_in_every_integer_form(convert):
    alloc, tree = make(block_size=2)
    tokens = [5, 6, 7, 8, 9]
    blocks = alloc.allocate(3)
    arg = range(5, 10) if convert is range else convert(tokens)
    assert tree.insert(arg, blocks) == 2
    assert tree.match(tokens) == blocks[:2]
    assert tree.match(arg) == blocks[:2]


@pytest.mark.parametrize(
    ("tokens", "error"),
    [
        (np.zeros((2, 2), dtype=np.int64), ValueError),
        (np.zeros(4, dtype=np.float32), TypeError),
        ([1.5, 2.0], TypeError),
        ("abcd", TypeError),
        (None, TypeError),
    ],
)
def test_bad_token_inputs(tokens, error):
    alloc, tree = make()
    with pytest.raises(error):
        tree.match(tokens)
    with pytest.raises(error):
        tree.insert(tokens, alloc.allocate(2))
    assert tree.num_cached_blocks == 0


def test_token_ids_must_fit_in_int32_to_be_cached():
    alloc, tree = make(block_size=2)
    blocks = alloc.allocate(2)
    with pytest.raises(ValueError, match="int32"):
        tree.insert([1, 2, 2**31, 3], blocks)
    assert tree.num_cached_blocks == 0
    assert refcounts(alloc)[:2] == [1, 1]
    tree.insert([1, 2, 3, 4], blocks)
    assert tree.match(np.array([1, 2, 2**40, 4])) == blocks[:1]


# --- insert errors leave no trace ---------------------------------------------------------------


def assert_insert_rejected(alloc, tree, tokens, blocks, match):
    before = (refcounts(alloc), alloc.num_free, tree.num_cached_blocks, tree.match(tokens))
    with pytest.raises(ValueError, match=match):
        tree.insert(tokens, blocks)
    assert (refcounts(alloc), alloc.num_free, tree.num_cached_blocks, tree.match(tokens)) == before


def test_insert_with_too_few_blocks():
    alloc, tree = make(block_size=2)
    assert_insert_rejected(alloc, tree, [1, 2, 3, 4, 5, 6], alloc.allocate(2), "needs as many blocks")


def test_insert_of_a_free_or_unknown_block():
    alloc, tree = make(num_blocks=4, block_size=2)
    held = alloc.allocate(1)
    assert_insert_rejected(alloc, tree, [1, 2, 3, 4], held + [3], "is free")
    assert_insert_rejected(alloc, tree, [1, 2, 3, 4], held + [4], "out of range")
    assert_insert_rejected(alloc, tree, [1, 2, 3, 4], held + [-1], "out of range")


def test_insert_of_a_block_that_already_backs_another_chunk():
    alloc, tree = make(block_size=2)
    blocks = alloc.allocate(2)
    tree.insert([1, 2], blocks[:1])
    assert_insert_rejected(alloc, tree, [5, 6], blocks[:1], "already backs")
    assert_insert_rejected(alloc, tree, [5, 6, 7, 8], [blocks[1], blocks[1]], "already backs")
    assert tree.insert([5, 6, 7, 8], blocks[1:] + alloc.allocate(1)) == 2  # flags were rolled back


# --- eviction -----------------------------------------------------------------------------------


def test_evicts_least_recently_used_first():
    alloc, tree = make(block_size=2)
    a = cache(alloc, tree, [1, 1])
    b = cache(alloc, tree, [2, 2])
    c = cache(alloc, tree, [3, 3])
    tree.match([1, 1])  # a is now the most recent
    assert tree.evict(1) == 1
    assert tree.match([2, 2]) == []
    assert tree.match([3, 3]) == c
    assert alloc.refcount(b[0]) == 0
    tree.match([3, 3])
    assert tree.evict(1) == 1
    assert tree.match([1, 1]) == []
    assert tree.match([3, 3]) == c
    assert alloc.refcount(a[0]) == 0


def test_insert_refreshes_the_path_it_walks():
    alloc, tree = make(block_size=2)
    cache(alloc, tree, [1, 1])
    cache(alloc, tree, [2, 2])
    cache(alloc, tree, [1, 1])  # a re-run counts as a use
    assert tree.evict(1) == 1
    assert tree.match([2, 2]) == []


def test_leaves_go_before_their_parents():
    alloc, tree = make(block_size=1)
    blocks = cache(alloc, tree, [1, 2, 3])
    cache(alloc, tree, [9])
    tree.match([1, 2, 3])
    order = []
    for _ in range(4):
        assert tree.evict(1) == 1
        order.append([b for b in blocks if alloc.refcount(b) == 0])
    # [9] is oldest; then the chain goes from the leaf up.
    assert order == [[], [blocks[2]], [blocks[1], blocks[2]], blocks]
    assert tree.num_cached_blocks == 0


def test_evict_returns_how_many_it_freed():
    alloc, tree = make(block_size=2)
    cache(alloc, tree, [1, 2, 3, 4])
    assert tree.evict(0) == 0
    assert tree.evict(5) == 2
    assert alloc.num_free == alloc.num_blocks
    with pytest.raises(ValueError):
        tree.evict(-1)


def test_pinned_leaf_is_never_evicted_nor_its_ancestors():
    alloc, tree = make(block_size=2)
    blocks = cache(alloc, tree, [1, 2, 3, 4])
    other = cache(alloc, tree, [1, 2, 5, 6])
    alloc.incref(blocks[1:])  # a running sequence still uses [3, 4]
    assert tree.num_evictable == 1
    assert tree.evict(10) == 1  # only [5, 6]
    assert alloc.refcount(other[1]) == 0
    assert tree.match([1, 2, 3, 4]) == blocks
    assert refcounts(alloc)[blocks[0]] == 1 and refcounts(alloc)[blocks[1]] == 2
    alloc.free(blocks[1:])
    assert tree.num_evictable == 2
    assert tree.evict(10) == 2


def test_pinned_interior_node_keeps_itself_but_not_its_children():
    alloc, tree = make(block_size=2)
    blocks = cache(alloc, tree, [1, 2, 3, 4, 5, 6])
    alloc.incref(blocks[:1])  # a sequence reused only the first chunk
    assert tree.num_evictable == 2
    assert tree.evict(10) == 2
    assert tree.match([1, 2, 3, 4, 5, 6]) == blocks[:1]
    assert tree.num_evictable == 0
    assert tree.evict(10) == 0


def test_num_evictable_is_what_evict_frees():
    alloc, tree = make(num_blocks=32, block_size=1)
    for tokens in ([1, 2, 3], [1, 2, 4], [1, 5], [6, 7], [6, 8, 9]):
        cache(alloc, tree, tokens)
    alloc.incref(tree.match([1, 2, 4]))
    alloc.incref(tree.match([6, 8])[1:])
    expected = tree.num_evictable
    assert expected == 4  # [3], [5], [7], [9]
    assert tree.evict(100) == expected
    assert tree.num_evictable == 0


# --- clear and lifetime -------------------------------------------------------------------------


def test_clear_drops_the_tree_references_only():
    alloc, tree = make(block_size=2)
    kept = cache(alloc, tree, [1, 2, 3, 4])
    cache(alloc, tree, [5, 6])
    alloc.incref(kept)
    tree.clear()
    assert tree.num_cached_blocks == 0
    assert tree.match([1, 2, 3, 4]) == []
    assert [alloc.refcount(b) for b in kept] == [1, 1]
    assert alloc.num_free == alloc.num_blocks - 2
    assert tree.insert([1, 2, 3, 4], kept) == 2  # the blocks can be cached again


def test_tree_keeps_its_allocator_alive():
    alloc = BlockAllocator(4)
    tree = RadixTree(alloc, 2)
    blocks = alloc.allocate(1)
    del alloc
    gc.collect()
    assert tree.insert([1, 2], blocks) == 1
    tree.clear()
    assert tree.insert([1, 2], blocks) == 1
    with pytest.raises(ValueError, match="is free"):
        tree.insert([3, 4], [3])


def test_dropping_the_tree_releases_its_references():
    alloc, tree = make()
    cache(alloc, tree, [1, 2, 3, 4])
    assert alloc.num_free == alloc.num_blocks - 2
    del tree
    gc.collect()
    assert alloc.num_free == alloc.num_blocks


def test_a_very_deep_chain_is_torn_down_without_recursion():
    n = 100_000
    alloc, tree = make(num_blocks=n, block_size=1)
    tokens = np.arange(n, dtype=np.int32) % 7
    blocks = alloc.allocate(n)
    assert tree.insert(tokens, blocks) == n
    assert tree.match(tokens) == blocks
    alloc.free(blocks)
    assert tree.num_evictable == n
    tree.clear()
    assert alloc.num_free == n
    tree.insert(tokens, alloc.allocate(n))
    del tree  # the destructor takes the same path


def test_repr():
    _, tree = make(block_size=4)
    assert repr(tree) == "RadixTree(block_size=4, num_cached_blocks=0)"
