"""A model with no chat template: ChatML when its vocab has ChatML's markers, else plain text (a base
model such as Gemma 3 270M, whose GGUF carries no template, is prompted for a completion)."""

from __future__ import annotations

from halo.engine.tokenizer import Tokenizer


def _metadata(extra_tokens: list[str]) -> dict:
    control = ["<pad>", "<eos>", "<bos>", "<unk>", *extra_tokens]
    tokens = control + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "a", "b", "ab"]
    return {
        "general.architecture": "gemma3",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * len(tokens),
        "tokenizer.ggml.token_type": [3] * len(control) + [6] * 256 + [1] * 4,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": False,
    }


def test_no_template_and_no_chatml_markers_is_plain_text() -> None:
    tok = Tokenizer.from_gguf_metadata(_metadata([]))
    assert tok.render_chat([{"role": "user", "content": "ab a"}]) == "<bos>ab a"
    two = [{"role": "system", "content": "b"}, {"role": "user", "content": "ab"}]
    assert tok.render_chat(two) == "<bos>b\n\nab"
    assert tok.encode(tok.render_chat([{"role": "user", "content": "ab"}])) == tok.encode_prompt("ab")


def test_no_template_with_chatml_markers_is_chatml() -> None:
    tok = Tokenizer.from_gguf_metadata(_metadata(["<|im_start|>", "<|im_end|>"]))
    text = tok.render_chat([{"role": "user", "content": "ab"}])
    assert text == "<bos><|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n"
