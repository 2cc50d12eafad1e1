"""Prompt tokens: chat requests of llm instances, tokenized on a worker thread during consolidation.

Consolidation hands over each llm node's new rendered requests as soon as that node is done; one
worker thread applies the chat template and encodes them, so the tokenizer's native batch encoder
(which releases the GIL) overlaps the Python work on the remaining nodes. One worker, so a
tokenizer is never called from two threads at once.

Chat prompts repeat whole segments (system prompts, role headers) between special tokens. An HF
tokenizer cuts its input at added tokens before anything else and encodes the pieces on their own,
so encoding each distinct piece once and concatenating is exact. `SegmentEncoder` does that when the
tokenizer exposes an HF backend whose added tokens strip nothing around them, and checks the first
texts of every batch against a plain `encode_batch` before trusting it; otherwise texts are encoded
whole.
"""

from __future__ import annotations

import re
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
        self._segments: dict[int, SegmentEncoder | None] = {}  # by id(tokenizer); worker thread only
        self.timings: dict[str, float] = {"chat_template": 0.0, "tokenize": 0.0, "tokenize_wait": 0.0}

    def submit(self, model: str, ids: list[int], messages: list[Messages]) -> None:
        tokenizer = self._tokenizer_for(model)
        if tokenizer is None or not ids:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="halo-tokenize")
        self._pending.append((model, ids, self._pool.submit(self._encode, tokenizer, messages)))

    def _encode(self, tokenizer: ChatTokenizer, messages: list[Messages]) -> tuple[list[list[int]], float, float]:
        clock = time.perf_counter()
        texts = [tokenizer.render_chat(m) for m in messages]
        rendered = time.perf_counter()
        key = id(tokenizer)
        if key not in self._segments:
            splitter = special_splitter(tokenizer)
            self._segments[key] = SegmentEncoder(tokenizer, splitter) if splitter is not None else None
        segments = self._segments[key]
        sequences = segments.encode(texts) if segments is not None else tokenizer.encode_batch(texts)
        return sequences, rendered - clock, time.perf_counter() - rendered

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


def special_splitter(tokenizer: ChatTokenizer) -> re.Pattern[str] | None:
    """A pattern matching the tokenizer's added tokens, when cutting texts there is exact."""
    backend = getattr(tokenizer, "backend", None)
    added = getattr(backend, "get_added_tokens_decoder", None)
    if added is None:
        return None
    tokens = list(added().values())
    normalizer = getattr(backend, "normalizer", None)
    for token in tokens:
        # A token that eats neighbouring spaces, or is matched after normalization, changes pieces.
        if token.lstrip or token.rstrip or token.single_word or (token.normalized and normalizer is not None):
            return None
    if not tokens:
        return None
    contents = sorted({t.content for t in tokens}, key=len, reverse=True)  # longest match first
    return re.compile("(" + "|".join(re.escape(c) for c in contents) + ")")


class SegmentEncoder:
    """Encodes texts piece by piece between added tokens, each distinct piece once."""

    CHECKED = 8  # texts per batch compared with a whole-text encode before the pieces are trusted

    def __init__(self, tokenizer: ChatTokenizer, splitter: re.Pattern[str]) -> None:
        self._tokenizer = tokenizer
        self._splitter = splitter
        self._pieces: dict[str, list[int]] = {}
        self.trusted = True

    def encode(self, texts: list[str]) -> list[list[int]]:
        if not self.trusted:
            return self._tokenizer.encode_batch(texts)
        split = [[p for p in self._splitter.split(text) if p] for text in texts]
        pieces = self._pieces
        new = list({p for parts in split for p in parts if p not in pieces})
        if new:
            pieces.update(zip(new, self._tokenizer.encode_batch(new), strict=True))
        out = [[token for p in parts for token in pieces[p]] for parts in split]
        sample = texts[: self.CHECKED]
        if self._tokenizer.encode_batch(sample) != out[: len(sample)]:
            self.trusted = False  # the tokenizer does not cut at its added tokens: encode whole texts
            return self._tokenizer.encode_batch(texts)
        return out
