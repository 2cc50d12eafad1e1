"""What consolidation needs from a tokenizer, and a tiny whitespace tokenizer for tests and benches.

`halo.engine.tokenizer.Tokenizer` satisfies `ChatTokenizer`: it renders the model's chat template and
encodes a batch of texts at once (in Rust, off the GIL).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ChatTokenizer(Protocol):
    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The prompt text a chat request is prefilled with (template applied, generation prompt added)."""
        ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...


class WhitespaceTokenizer:
    """One token per whitespace-separated word (and per chat marker), ids assigned on first sight.

    Deterministic and exact to count by hand, which is what tests need; not a real model's tokenizer.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        turns = [f"<|im_start|> {m['role']} {m['content']} <|im_end|>" for m in messages]
        return " ".join([*turns, "<|im_start|> assistant"])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        ids = self._ids
        return [[ids.setdefault(word, len(ids)) for word in text.split()] for text in texts]
