"""KV block bookkeeping for sequences: allocation, release and prefix-cache reuse over ``halo._core``."""

from __future__ import annotations

from halo._core import BlockAllocator, RadixTree
from halo.engine.sequence import Sequence


class BlockManager:
    """Owns the block allocator and the radix prefix cache.

    Invariant: every block id in a sequence's ``block_table`` holds one reference for that sequence;
    the radix tree holds one more reference on every block it caches. Cached blocks are full and
    never written again, so sharing them needs no copy-on-write.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True) -> None:
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks)
        self.tree = RadixTree(self.allocator, block_size)
        self.enable_prefix_cache = enable_prefix_cache

    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    @property
    def num_free(self) -> int:
        return self.allocator.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, seq: Sequence) -> int:
        """Point a fresh sequence at the cached blocks of its longest cached prefix; returns tokens reused.

        At least one token is left to compute, because the step that computes it yields the logits; a
        scoring sequence computes every position from ``score_from`` on, whose logits it needs.
        """
        assert not seq.block_table and seq.num_computed == 0
        if not self.enable_prefix_cache:
            return 0
        last = seq.num_tokens - 1 if seq.score_from is None else min(seq.score_from, seq.num_tokens - 1)
        usable = last // self.block_size * self.block_size
        if usable == 0:
            return 0
        blocks = self.tree.match(seq.tokens[:usable])
        if not blocks:
            return 0
        self.allocator.incref(blocks)
        seq.block_table = list(blocks)
        seq.num_computed = len(blocks) * self.block_size
        seq.num_published_blocks = len(blocks)
        return seq.num_computed

    def cached_prefix_len(self, tokens: list[int]) -> int:
        """Tokens a new request with prompt `tokens` would find cached now (what `match_prefix` would
        reuse); takes no references. The matched nodes count as used for the LRU: they are about to be."""
        if not self.enable_prefix_cache:
            return 0
        usable = (len(tokens) - 1) // self.block_size * self.block_size
        return len(self.tree.match(tokens[:usable])) * self.block_size if usable > 0 else 0

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether blocks for ``num_new_tokens`` more computed tokens exist, evicting cold cache if needed."""
        need = self.blocks_for(seq.num_computed + num_new_tokens) - len(seq.block_table)
        if need <= self.allocator.num_free:
            return True
        self.tree.evict(need - self.allocator.num_free)
        return need <= self.allocator.num_free

    def append(self, seq: Sequence, num_new_tokens: int) -> None:
        need = self.blocks_for(seq.num_computed + num_new_tokens) - len(seq.block_table)
        if need > 0:
            seq.block_table.extend(self.allocator.allocate(need))

    def trim(self, seq: Sequence) -> None:
        """Free the blocks past the sequence's computed tokens (rejected drafts' slots). They were never
        published: only blocks full of computed tokens are, so the prefix cache holds no guess."""
        keep = self.blocks_for(seq.num_computed)
        if len(seq.block_table) > keep:
            assert keep >= seq.num_published_blocks
            self.allocator.free(seq.block_table[keep:])
            del seq.block_table[keep:]

    def publish(self, seq: Sequence) -> None:
        """Offer the sequence's newly completed full blocks to the prefix cache."""
        if not self.enable_prefix_cache:
            return
        full = seq.num_computed // self.block_size
        if full > seq.num_published_blocks:
            self.tree.insert(seq.tokens[: full * self.block_size], seq.block_table[:full])
            seq.num_published_blocks = full

    def release(self, seq: Sequence) -> None:
        if seq.block_table:
            self.allocator.free(seq.block_table)
        seq.block_table = []
        seq.num_computed = 0
        seq.num_published_blocks = 0

    def reset_prefix_cache(self) -> None:
        self.tree.clear()
