"""Prompt tokens: chat requests of llm instances, tokenized on a worker thread during consolidation.

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
from halo.spec.nodes import LlmNode

Messages = list[dict[str, str]]

_SENTINEL = "\u2063HALO\u2063"  # marks where a deferred prompt's known text ends


def chat_messages(spec: LlmNode, values: tuple[str, ...]) -> Messages:
    """The chat request of a rendered llm instance (`values`: its rendered system?, prompt)."""
    if spec.system is None:
        return [{"role": "user", "content": values[0]}]
    return [{"role": "system", "content": values[0]}, {"role": "user", "content": values[1]}]


def static_prefix_tokens(spec: LlmNode, tokenizer: ChatTokenizer) -> int | None:
    """Tokens every request of an llm node starts with, whatever its templates later render.

    The literal text before the first template tag goes through the chat template; the last token
    is dropped, since it may merge differently once the rest of the text follows it.
    """
    if spec.system is not None and _head(spec.system) != spec.system:
        messages = [{"role": "system", "content": _head(spec.system) + _SENTINEL}]
    else:
        messages = [{"role": "user", "content": _head(spec.prompt) + _SENTINEL}]
        if spec.system is not None:
            messages.insert(0, {"role": "system", "content": spec.system})
    text = tokenizer.render_chat(messages)
    cut = text.find(_SENTINEL)
    if cut < 0:
        return None
    return max(0, len(tokenizer.encode_batch([text[:cut]])[0]) - 1)


def _head(template: str) -> str:
    """The literal text of a template before its first tag."""
    cut = len(template)
    for tag in ("{{", "{%", "{#"):
        found = template.find(tag)
        if found >= 0:
            cut = min(cut, found)
    return template[:cut]


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
