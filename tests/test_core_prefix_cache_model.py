"""Model-based random test of the prefix cache: the native BlockAllocator + RadixTree run side by
side with a plain-Python reference of both through random engine-like histories, and must agree on
every block id handed out, every refcount, every match and every eviction."""

import copy

import numpy as np
import pytest
from halo._core import BlockAllocator, OutOfBlocksError, RadixTree
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule


def refcounts(alloc: BlockAllocator) -> list[int]:
    return [alloc.refcount(b) for b in range(alloc.num_blocks)]


class RefAllocator:
    """The allocator's contract in plain Python, including its free-list order."""

    def __init__(self, num_blocks: int):
        self.rc = [0] * num_blocks
        self.free_stack = list(reversed(range(num_blocks)))

    @property
    def num_free(self) -> int:
        return len(self.free_stack)

    def allocate(self, n: int) -> list[int]:
        if n > len(self.free_stack):
            raise OutOfBlocksError
        out = [self.free_stack.pop() for _ in range(n)]
        for b in out:
            self.rc[b] = 1
        return out

    def incref(self, blocks: list[int]) -> None:
        for b in blocks:
            assert self.rc[b] > 0
            self.rc[b] += 1

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            assert self.rc[b] > 0
            self.rc[b] -= 1
            if self.rc[b] == 0:
                self.free_stack.append(b)


class RefTree:
    """The tree's contract in plain Python: nodes keyed by their whole path of chunks."""

    def __init__(self, alloc: RefAllocator, block_size: int):
        self.alloc, self.bs = alloc, block_size
        self.nodes: dict[tuple, list[int]] = {}  # path -> [block, last_access]
        self.clock = 0

    def paths(self, tokens: list[int]) -> list[tuple]:
        chunks = [tuple(tokens[i : i + self.bs]) for i in range(0, len(tokens) - self.bs + 1, self.bs)]
        return [tuple(chunks[: i + 1]) for i in range(len(chunks))]

    def match(self, tokens: list[int]) -> list[int]:
        self.clock += 1
        out = []
        for path in self.paths(tokens):
            if path not in self.nodes:
                break
            self.nodes[path][1] = self.clock
            out.append(self.nodes[path][0])
        return out

    def insert(self, tokens: list[int], blocks: list[int]) -> int:
        paths = self.paths(tokens)
        new = [(p, b) for p, b in zip(paths, blocks, strict=False) if p not in self.nodes]
        self.alloc.incref([b for _, b in new])
        self.clock += 1
        for p, b in zip(paths, blocks, strict=False):
            self.nodes.setdefault(p, [b, 0])[1] = self.clock
        return len(new)

    def is_leaf(self, path: tuple) -> bool:
        return not any(len(p) == len(path) + 1 and p[:-1] == path for p in self.nodes)

    def evict(self, k: int) -> int:
        freed = []
        while len(freed) < k:
            stamps = sorted(
                (stamp, p)
                for p, (b, stamp) in self.nodes.items()
                if self.is_leaf(p) and self.alloc.rc[b] == 1
            )
            if not stamps:
                break
            assert len(stamps) == 1 or stamps[0][0] < stamps[1][0], "LRU order must be unambiguous"
            freed.append(self.nodes.pop(stamps[0][1])[0])
        self.alloc.free(freed)
        return len(freed)

    def num_evictable(self) -> int:
        pinned = {p for p, (b, _) in self.nodes.items() if self.alloc.rc[b] != 1}
        return sum(not any(q[: len(p)] == p for q in pinned) for p in self.nodes)

    def clear(self) -> None:
        self.alloc.free(sorted(b for b, _ in self.nodes.values()))
        self.nodes.clear()


forms = st.sampled_from([list, np.int32, np.int64])
# A prompt is a fresh token list, or an earlier prompt cut short and extended: that is how real
# prompts share prefixes (a system prompt, few-shot examples), and it is what makes the cache hit.
prompts = st.tuples(
    st.integers(0, 99),  # which earlier prompt (if any) to start from
    st.integers(0, 6),  # how many of its tokens to drop
    st.lists(st.integers(0, 1), max_size=6),  # new tokens to append
)


def as_form(tokens: list[int], form):
    return list(tokens) if form is list else np.array(tokens, dtype=form)


class CacheMachine(RuleBasedStateMachine):
    """Sequences start (reusing the cache), grow, get cached and finish or abort, while the cache
    is matched, evicted and cleared; the native pair and the reference pair must agree at every
    step."""

    @initialize(num_blocks=st.integers(4, 16), block_size=st.integers(1, 3))
    def setup(self, num_blocks, block_size):
        self.alloc = BlockAllocator(num_blocks)
        self.tree = RadixTree(self.alloc, block_size)
        self.ref_alloc = RefAllocator(num_blocks)
        self.ref_tree = RefTree(self.ref_alloc, block_size)
        self.running: list[tuple[list[int], list[int]]] = []
        self.seen: list[list[int]] = [[]]

    def prompt(self, choice: tuple[int, int, list[int]]) -> list[int]:
        which, drop, suffix = choice
        base = self.seen[which % len(self.seen)]
        tokens = base[: max(0, len(base) - drop)] + suffix
        self.seen.append(tokens)
        return tokens

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.tree.block_size)

    def make_room(self, need: int) -> bool:
        short = need - self.alloc.num_free
        if short > 0:
            assert self.tree.evict(short) == self.ref_tree.evict(short)
        if self.alloc.can_allocate(need):
            return True
        with pytest.raises(OutOfBlocksError):
            self.alloc.allocate(need)
        return False

    def allocate_both(self, n: int) -> list[int]:
        got = self.alloc.allocate(n)
        assert got == self.ref_alloc.allocate(n)
        return got

    def for_both(self, method: str, *args) -> None:
        getattr(self.alloc, method)(*args)
        getattr(self.ref_alloc, method)(*args)

    def insert_both(self, tokens: list[int], blocks: list[int], form) -> None:
        assert self.tree.insert(as_form(tokens, form), blocks) == self.ref_tree.insert(tokens, blocks)

    def pick(self, i: int) -> tuple[list[int], list[int]]:
        return self.running[i % len(self.running)]

    @rule(choice=prompts, form=forms)
    def start(self, choice, form):
        tokens = self.prompt(choice)
        matched = self.tree.match(as_form(tokens, form))
        assert matched == self.ref_tree.match(tokens)
        self.for_both("incref", matched)
        need = self.blocks_for(len(tokens)) - len(matched)
        if not self.make_room(need):
            self.for_both("free", matched)
            return
        self.running.append((tokens, matched + self.allocate_both(need)))

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 99), extra=st.lists(st.integers(0, 1), min_size=1, max_size=4))
    def grow(self, i, extra):
        tokens, blocks = self.pick(i)
        need = self.blocks_for(len(tokens) + len(extra)) - len(blocks)
        if self.make_room(need):
            tokens.extend(extra)
            blocks.extend(self.allocate_both(need))

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 99), form=forms)
    def cache(self, i, form):
        self.insert_both(*self.pick(i), form)

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 99), form=forms)
    def finish(self, i, form):
        tokens, blocks = self.running.pop(i % len(self.running))
        self.insert_both(tokens, blocks, form)
        self.for_both("free", blocks)

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 99))
    def abort(self, i):
        _, blocks = self.running.pop(i % len(self.running))
        self.for_both("free", blocks)

    @rule(choice=prompts, form=forms)
    def match(self, choice, form):
        tokens = self.prompt(choice)
        assert self.tree.match(as_form(tokens, form)) == self.ref_tree.match(tokens)

    @rule(k=st.integers(0, 2))
    def evict(self, k):
        assert self.tree.evict(k) == self.ref_tree.evict(k)

    @rule(roll=st.integers(0, 9))
    def clear(self, roll):
        if roll:  # rarely, or the cache would seldom grow big enough to make evict choose
            return
        self.tree.clear()
        self.ref_tree.clear()

    @invariant()
    def agree(self):
        assert refcounts(self.alloc) == self.ref_alloc.rc
        assert self.alloc.num_free == self.ref_alloc.num_free
        assert self.tree.num_cached_blocks == len(self.ref_tree.nodes)
        evictable = self.tree.num_evictable
        assert evictable == self.ref_tree.num_evictable()
        _, scratch = copy.deepcopy((self.ref_alloc, self.ref_tree))
        assert scratch.evict(len(scratch.nodes)) == evictable  # "exactly what repeated evict frees"


CacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestCacheMachine = CacheMachine.TestCase
