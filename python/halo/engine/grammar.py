"""Constrained decoding: an `OutputFormat` compiled with llguidance into per-sequence token masks.

One `GrammarCompiler` per engine (so per tokenizer) owns the `llguidance.LLTokenizer` (built from the
vocabulary stored with the converted checkpoint when there is one, else from the engine tokenizer's
`tokenizers` JSON: engine/grammar_vocabulary.py), a bounded LRU of compiled formats and an `LLExecutor` that
computes the masks of all constrained rows of a step in parallel (it releases the GIL). A format is
compiled once into a pristine `LLMatcher`; every request with that format gets a `deep_copy` of it,
which the engine advances over each token it appends (sampled or forced).

Masks are applied here, not with `llguidance.torch.apply_token_bitmask_inplace`: that one goes
through torch.compile, which on CPU invokes inductor (a C++ toolchain at run time). The int32
bitmask is unpacked with numpy (little-endian bit order, as llguidance writes it) and masked_fill'ed.

Why llguidance: a CPU-first Rust library with no torch/transformers dependency at run time (xgrammar
needs both), masks in tens of microseconds from a lazily built lexer DFA plus an Earley parser,
forced-token computation for jump-forward built in, and JSON Schema, regex and Lark front ends.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import llguidance
import numpy as np
import torch

from halo.engine.grammar_vocabulary import GrammarVocabulary, from_json, from_vocabulary
from halo.engine.output_format import OutputFormat
from halo.engine.tokenizer import Tokenizer
from halo.errors import InvalidRequestError
from halo.output_grammar import grammar_of

DEFAULT_CACHE_SIZE = 64  # compiled formats kept per engine; a workflow has a handful, a server a few dozen


def grammar_text(fmt: OutputFormat) -> str:
    """The llguidance grammar of a format (not yet checked; `format_error` checks it): the one
    construction the spec also uses (halo/output_grammar.py)."""
    return grammar_of(choices=fmt.choices, regex=fmt.regex if fmt.kind == "regex" else None, schema=fmt.schema)


def format_error(fmt: OutputFormat) -> str | None:
    """Why the format does not compile (None when it does), without a tokenizer: for spec validation."""
    try:
        message = llguidance.LLMatcher.validate_grammar(grammar_text(fmt))
    except ValueError as exc:  # schema text that is not a JSON object
        message = str(exc)
    return message.strip() or None


@dataclass
class MaskTiming:
    """What one `apply_masks` call cost."""

    rows: int = 0
    seconds: float = 0.0


class GrammarCompiler:
    """Compiles formats for one tokenizer, hands out per-sequence matchers and masks logits rows."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        n_vocab: int,
        cache_size: int = DEFAULT_CACHE_SIZE,
        vocabulary: GrammarVocabulary | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        # the stored vocabulary of this tokenizer at this logits width, if any (else built from the JSON)
        self.vocabulary = vocabulary if vocabulary is not None and vocabulary.n_vocab == n_vocab else None
        self.n_vocab = n_vocab  # the model's logits width (may exceed the tokenizer's vocab)
        self.cache_size = cache_size
        self.eos_ids = sorted(tokenizer.stop_ids)
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        # format -> pristine matcher, or the compile error text (a bad format fails fast the next time too)
        self._cache: OrderedDict[OutputFormat, llguidance.LLMatcher | str] = OrderedDict()
        self.compiles = 0  # cache misses

    @property
    def lltokenizer(self) -> llguidance.LLTokenizer:
        # Built on first use: an engine that never sees a constrained request never pays for it.
        if self._lltokenizer is None:
            self._lltokenizer = (
                from_json(self.tokenizer, self.n_vocab)
                if self.vocabulary is None
                else from_vocabulary(self.tokenizer, self.vocabulary)
            )
        return self._lltokenizer

    def matcher(self, fmt: OutputFormat) -> llguidance.LLMatcher:
        """A fresh matcher for one sequence; a format that does not compile is an InvalidRequestError."""
        entry = self._cache.get(fmt)
        if entry is None:
            entry = self._compile(fmt)
            self._cache[fmt] = entry
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(fmt)
        if isinstance(entry, str):
            raise InvalidRequestError(f"output format {fmt.describe()!r} does not compile: {entry}")
        return entry.deep_copy()

    def _compile(self, fmt: OutputFormat) -> llguidance.LLMatcher | str:
        self.compiles += 1
        try:
            grammar = grammar_text(fmt)
        except ValueError as exc:
            return str(exc)
        m = llguidance.LLMatcher(self.lltokenizer, grammar, log_level=0)
        if m.is_error():
            return m.get_error().strip() or "unknown grammar error"
        return m

    def accepts_text(self, fmt: OutputFormat, text: str) -> bool:
        """Whether ``text`` alone is a complete output of the format (used where a stop string cut it)."""
        m = self.matcher(fmt)
        return m.consume_tokens(self.lltokenizer.tokenize_str(text)) and m.is_accepting()

    def apply_masks(
        self, logits: torch.Tensor, rows: list[int], matchers: list[llguidance.LLMatcher], keep_eos: list[bool]
    ) -> None:
        """Set to -inf, in place, every token of ``logits[rows[i]]`` that ``matchers[i]`` does not allow.

        ``keep_eos[i]`` False removes the EOS tokens from that row's allowed set (a request with
        ``ignore_eos``) unless nothing else is allowed.
        """
        if not rows:
            return
        assert logits.shape[1] == self.n_vocab, (logits.shape, self.n_vocab)
        if self._executor is None:
            self._executor = llguidance.LLExecutor()
        words = (self.n_vocab + 31) // 32
        bitmask = np.zeros((len(rows), words), dtype=np.int32)
        self._executor.unsafe_compute_mask_ptr(
            [(m, i) for i, m in enumerate(matchers)], bitmask.ctypes.data, words * 4, len(rows)
        )
        allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, : logits.shape[1]]
        allowed_t = torch.from_numpy(allowed.astype(np.bool_))
        for i, keep in enumerate(keep_eos):
            if not keep:
                row = allowed_t[i].clone()
                row[self.eos_ids] = False
                if row.any():
                    allowed_t[i] = row
        index = torch.tensor(rows, dtype=torch.int64)
        with torch.inference_mode():  # the forward pass's logits are inference tensors
            logits[index] = logits[index].masked_fill(~allowed_t, float("-inf"))
