"""GGUF tokenizers give transformers' ids: every supported pre-tokenizer and the SentencePiece kind.

For each byte-level pre-tokenizer halo names (`gpt2`, `smollm`, `llama-bpe`, `qwen2`) a BPE is trained
here with that pre-tokenizer (the split regexes are transformers' own strings), saved as an HF
directory and turned into `tokenizer.ggml.*` metadata the way llama.cpp's converter writes it. Halo's
GGUF tokenizer and its HF-directory tokenizer must give the ids of transformers' AutoTokenizer on the
directory, and, where transformers reads that GGUF tokenizer correctly (not `smollm`, which it splits
without single digits), of AutoTokenizer on the GGUF. The SentencePiece `llama` kind (scores, byte
fallback; Mistral-style with a prefix space and Gemma-style without) is checked against
transformers' GGUF tokenizer. The corpus has digits, whitespace runs, accents, CJK, emoji, code and
special tokens written in text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="transformers is a test dependency (pip install 'halo[test]')")

from halo.engine.tokenizer import Tokenizer  # noqa: E402
from halo.errors import ModelLoadError  # noqa: E402
from tiny_checkpoints import CORPUS, SPECIAL_TOKENS, gguf_metadata_from_tokenizer, write_metadata_gguf  # noqa: E402
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer
from transformers import AutoTokenizer  # noqa: E402
from transformers.integrations.gguf.gguf_tokenizer_mapping import _LLAMA3_SPLIT, _QWEN2_SPLIT  # noqa: E402

TEXTS = [
    "Order 1042 shipped on 2024-03-15 for $1,234.56; call 555-0199 or 12345678901.",
    "  leading spaces, double  spaces,\ttabs\t\tand trailing   ",
    "line one\nline two\n\n\nafter blank lines\r\nwindows",
    "café naïve résumé Ünïcödé façade — “quotes” ½ Ångström",
    "日本語のテキストと中文句子，还有한국어 문장.",
    "emoji 😀🎉👍🏽 and a flag 🇫🇷 and zwj 👩‍💻",
    "def add(a, b):\n    return a + b  # sum\n\nprint(add(2, 3)) if x != y else {'k': [1, 2]}",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nsure<|endoftext|>",
    "I'm sure they'll say it's 100% OK, don't you think? WE'RE DONE.",
]
BYTE_LEVEL = {
    "gpt2": pre_tokenizers.ByteLevel(add_prefix_space=False),
    "smollm": pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    ),
    "llama-bpe": pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    ),
    "qwen2": pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    ),
}


def train_byte_level(directory: Path, pre: str) -> None:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = BYTE_LEVEL[pre]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((CORPUS + TEXTS) * 4, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": "<bos>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config | {"add_bos_token": False}))


@pytest.mark.parametrize("pre", list(BYTE_LEVEL))
def test_byte_level_gguf_tokenizer_ids_equal_transformers(tmp_path: Path, pre: str) -> None:
    train_byte_level(tmp_path, pre)
    meta = gguf_metadata_from_tokenizer(tmp_path, pre)
    halo_gguf = Tokenizer.from_gguf_metadata(meta)
    halo_hf = Tokenizer.from_hf_dir(tmp_path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    refs = [ref]
    if pre != "smollm":
        write_metadata_gguf(tmp_path / "tok.gguf", "llama", meta)
        refs.append(AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tok.gguf"))
    for text in TEXTS:
        want = ref.encode(text, add_special_tokens=False)
        assert halo_gguf.encode(text) == want, text
        assert halo_hf.encode(text) == want, text
        for other in refs[1:]:
            assert other.encode(text, add_special_tokens=False) == want, text
        assert halo_gguf.decode(want, skip_special_tokens=False) == text
    assert halo_gguf.encode("<|im_end|>") == [ref.convert_tokens_to_ids("<|im_end|>")]


def spm_metadata(directory: Path, arch: str, add_space_prefix: bool) -> dict:
    """A SentencePiece-style vocab (control, byte and scored tokens) trained here, as GGUF metadata."""
    control = ["<pad>", "<eos>", "<bos>", "<unk>", "<|im_start|>", "<|im_end|>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=control + byte_tokens, show_progress=False)
    tok.train_from_iterator((CORPUS + TEXTS) * 4, trainer)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    kinds = {**dict.fromkeys(control, 3), **dict.fromkeys(byte_tokens, 6), "<unk>": 2}
    return {
        "general.architecture": arch,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        # trained merges come in id order: the score of a merged token is minus its id
        "tokenizer.ggml.scores": [0.0 if t in kinds else -float(i) for i, t in enumerate(tokens)],
        "tokenizer.ggml.token_type": [kinds.get(t, 1) for t in tokens],
        "tokenizer.ggml.bos_token_id": vocab["<bos>"],
        "tokenizer.ggml.eos_token_id": vocab["<eos>"],
        "tokenizer.ggml.unknown_token_id": vocab["<unk>"],
        "tokenizer.ggml.padding_token_id": vocab["<pad>"],
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": add_space_prefix,
    }


@pytest.mark.parametrize(("arch", "add_space_prefix"), [("llama", True), ("gemma3", False)])
def test_sentencepiece_gguf_tokenizer_ids_equal_transformers(tmp_path: Path, arch: str, add_space_prefix: bool) -> None:
    meta = spm_metadata(tmp_path, arch, add_space_prefix)
    write_metadata_gguf(tmp_path / "tok.gguf", arch, {k: v for k, v in meta.items() if k != "general.architecture"})
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tok.gguf")
    halo = Tokenizer.from_gguf_metadata(meta)
    for text in TEXTS:
        want = ref.encode(text, add_special_tokens=False)
        assert halo.encode(text) == want, text
        assert halo.decode(want) == ref.decode(want, skip_special_tokens=True)
    pieces = [halo.backend.id_to_token(i) for i in halo.encode("🦀")]  # not in the corpus: byte fallback
    assert [p for p in pieces if p != "\u2581"] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"]
    bos = meta["tokenizer.ggml.bos_token_id"]
    assert halo.add_bos and halo.encode_prompt("Water boils") == [bos, *halo.encode("Water boils")]


def test_bos_is_added_once_to_chat_prompts(tmp_path: Path) -> None:
    meta = spm_metadata(tmp_path, "gemma3", False)
    bos = meta["tokenizer.ggml.bos_token_id"]
    messages = [{"role": "user", "content": "hi"}]
    with_bos = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    for template in (with_bos, with_bos.removeprefix("{{ bos_token }}")):
        tok = Tokenizer.from_gguf_metadata(meta | {"tokenizer.chat_template": template})
        ids = tok.encode(tok.render_chat(messages))
        assert ids[0] == bos and ids.count(bos) == 1
        assert tok.token_to_id("<|im_end|>") in tok.stop_ids
    plain = Tokenizer.from_gguf_metadata(meta | {"tokenizer.ggml.add_bos_token": False})
    assert bos not in plain.encode_prompt("hi") and not plain.render_chat(messages).startswith("<bos>")


@pytest.mark.parametrize(
    ("key", "value"), [("tokenizer.ggml.pre", "tekken-2099"), ("tokenizer.ggml.model", "bert")], ids=["pre", "model"]
)
def test_unknown_tokenizer_is_a_load_error_naming_the_value(tmp_path: Path, key: str, value: str) -> None:
    train_byte_level(tmp_path, "gpt2")
    meta = gguf_metadata_from_tokenizer(tmp_path, "gpt2") | {key: value}
    with pytest.raises(ModelLoadError, match=f"{key} '{value}' is not supported"):
        Tokenizer.from_gguf_metadata(meta, source="x.gguf")
