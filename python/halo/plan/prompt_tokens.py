"""Tokenizing rendered llm requests on a worker thread while consolidation goes on.

Consolidation hands over each llm node's new rendered requests as soon as that node is done; one
worker thread applies the chat template and encodes them, so the tokenizer's native batch encoder
(which releases the GIL) overlaps the Python work on the remaining nodes. One worker, so a
tokenizer is never called from two threads at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from halo.plan.chat_tokenizer import ChatTokenizer

Messages = list[dict[str, str]]


class PromptTokens:
    """Collects token sequences per model for physical ids submitted in batches."""

    def __init__(self, tokenizer_for: Callable[[str], ChatTokenizer | None]) -> None:
        self._tokenizer_for = tokenizer_for
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[tuple[str, list[int], Future[tuple[list[list[int]], float, float]]]] = []
        self.timings: dict[str, float] = {"chat_template": 0.0, "tokenize": 0.0, "tokenize_wait": 0.0}

    def submit(self, model: str, ids: list[int], messages: list[Messages]) -> None:
        tokenizer = self._tokenizer_for(model)
        if tokenizer is None or not ids:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="halo-tokenize")
        self._pending.append((model, ids, self._pool.submit(_encode, tokenizer, messages)))

    def collect(self) -> dict[str, tuple[list[int], list[list[int]]]]:
        """Wait for every submitted batch; per model, the physical ids and their token sequences."""
        out: dict[str, tuple[list[int], list[list[int]]]] = {}
        clock = time.perf_counter()
        try:
            for model, ids, future in self._pending:
                sequences, chat_seconds, encode_seconds = future.result()
                self.timings["chat_template"] += chat_seconds
                self.timings["tokenize"] += encode_seconds
                all_ids, all_sequences = out.setdefault(model, ([], []))
                all_ids.extend(ids)
                all_sequences.extend(sequences)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
        self.timings["tokenize_wait"] = time.perf_counter() - clock
        return out


def _encode(tokenizer: ChatTokenizer, messages: list[Messages]) -> tuple[list[list[int]], float, float]:
    clock = time.perf_counter()
    texts = [tokenizer.render_chat(m) for m in messages]
    rendered = time.perf_counter()
    sequences = tokenizer.encode_batch(texts)
    return sequences, rendered - clock, time.perf_counter() - rendered
