"""The grammar engine's view of a tokenizer's vocabulary, kept with the converted checkpoint.

llguidance's `LLTokenizer`, built from a tokenizer's JSON, parses that JSON again in Rust (its own
copy of the HF tokenizer) and derives every token's bytes: about 0.25 s for the default model (0.7 s
on a loaded machine), paid by the first constrained request of every process. It has no serialized
form, but what it derives does: each token's bytes and which tokens are special. The conversion
cache stores them with the checkpoint (`Checkpoint.grammar_vocabulary`, computed when the entry is
written), and `GrammarCompiler` then builds the LLTokenizer from them and the engine tokenizer's own
encoder through llguidance's `TokenizerWrapper`, in well under half the time. Same token bytes, same
special tokens, same encoder: the same masks and forced tokens (tests/test_structured_decoding.py
holds the two constructions to that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from halo.engine.tokenizer import Tokenizer

if TYPE_CHECKING:  # llguidance loads with the first constrained request, not with the engine
    import llguidance


@dataclass(frozen=True)
class GrammarVocabulary:
    """Every token's bytes as llguidance reads them, and the special tokens, for a logits width."""

    n_vocab: int
    tokens: tuple[bytes, ...]
    special_ids: tuple[int, ...]


def from_json(tokenizer: Tokenizer, n_vocab: int) -> llguidance.LLTokenizer:
    """The LLTokenizer built from the tokenizer's JSON (the construction without a stored vocabulary)."""
    import llguidance

    return llguidance.LLTokenizer(tokenizer.backend.to_str(), n_vocab=n_vocab, eos_token=sorted(tokenizer.stop_ids))


def grammar_vocabulary(tokenizer: Tokenizer, n_vocab: int) -> GrammarVocabulary:
    """What `from_vocabulary` needs, read off the LLTokenizer of the tokenizer's JSON."""
    reference = from_json(tokenizer, n_vocab)
    size = reference.vocab_size
    return GrammarVocabulary(
        n_vocab,
        tuple(reference.decode_bytes([i]) for i in range(size)),
        tuple(i for i in range(size) if reference.is_special_token(i)),
    )


def from_vocabulary(tokenizer: Tokenizer, vocabulary: GrammarVocabulary) -> llguidance.LLTokenizer:
    """The LLTokenizer of a stored vocabulary, encoding text with ``tokenizer`` (the same JSON's encoder)."""
    import llguidance

    stops = sorted(tokenizer.stop_ids)
    return llguidance.LLTokenizer(
        llguidance.TokenizerWrapper(_Encoder(tokenizer, vocabulary, stops[0])),
        n_vocab=vocabulary.n_vocab,
        eos_token=stops,
    )


class _Encoder:
    """The object `TokenizerWrapper` reads: token bytes, special ids, and an encoder of text (str only:
    llguidance hands it valid UTF-8 and tokenizes any incomplete tail itself)."""

    def __init__(self, tokenizer: Tokenizer, vocabulary: GrammarVocabulary, eos: int) -> None:
        self.tokenizer = tokenizer
        self.tokens = list(vocabulary.tokens)
        self.special_token_ids = list(vocabulary.special_ids)
        self.eos_token_id = eos
        self.bos_token_id = None  # as the JSON construction: text is encoded without one

    def __call__(self, text: Any) -> list[int]:
        if not isinstance(text, str):
            raise TypeError("encodes text, not bytes")  # TokenizerWrapper probes this once
        return self.tokenizer.encode(text)
