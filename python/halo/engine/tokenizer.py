"""Text ↔ token ids and chat rendering for a Llama-family model, built on the HF `tokenizers` library.

Two sources: GGUF metadata (a byte-level BPE rebuilt from the vocab and merges, matching llama.cpp's
`smollm` pre-tokenizer) or an HF directory's tokenizer.json. Chat prompts are rendered with the
model's own Jinja template in a sandbox; a model without one gets plain ChatML.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from halo.errors import InvalidRequestError, ModelLoadError

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})

# Used only when a model carries no template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# End-of-turn markers of common chat templates; one that the template emits ends generation too.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>")

GGUF_TOKEN_TYPE_CONTROL = 3


class Tokenizer:
    """Encodes, decodes and renders chat prompts; never adds BOS/EOS on its own."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        eos_id: int,
        bos_id: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.eos_id = eos_id
        self.bos_id = bos_id
        self.chat_template = chat_template
        template = chat_template or CHATML_TEMPLATE
        self.stop_ids: frozenset[int] = frozenset({eos_id} | self._end_of_turn_ids(template))
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        self._template = env.from_string(template)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any], source: str = "GGUF metadata") -> Tokenizer:
        """Build from GGUF `tokenizer.*` keys (values already decoded); `source` names the file in errors."""
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelLoadError(f"{source}: tokenizer model {kind!r} is not supported (only 'gpt2' BPE)")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id"):
            if key not in meta:
                raise ModelLoadError(f"{source}: GGUF metadata key {key} is missing")
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        types: Sequence[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        backend = tokenizers.Tokenizer(
            models.BPE(vocab={tok: i for i, tok in enumerate(tokens)}, merges=merges)
        )
        # llama.cpp's `smollm` pre-tokenizer: single digits, then the GPT-2 regex.
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        # Control tokens are already in the vocab, so adding them keeps their ids; marking them
        # special makes `<|im_start|>` in text map to its id and lets decode skip them.
        control = [tok for tok, kind in zip(tokens, types, strict=True) if kind == GGUF_TOKEN_TYPE_CONTROL]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
        bos = meta.get("tokenizer.ggml.bos_token_id")
        return cls(
            backend,
            eos_id=int(meta["tokenizer.ggml.eos_token_id"]),
            bos_id=None if bos is None else int(bos),
            chat_template=meta.get("tokenizer.chat_template"),
        )

    @classmethod
    def from_hf_dir(cls, directory: str | Path) -> Tokenizer:
        """Build from an HF directory: tokenizer.json, plus tokenizer_config.json / config.json if present."""
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"missing tokenizer file {path}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise ModelLoadError(f"cannot read tokenizer {path}: {exc}") from exc
        tok_cfg = _read_json(directory / "tokenizer_config.json")
        model_cfg = _read_json(directory / "config.json")
        eos_id = _special_id(backend, tok_cfg.get("eos_token"), model_cfg.get("eos_token_id"))
        if eos_id is None:
            raise ModelLoadError(f"no eos token in {directory / 'tokenizer_config.json'} or config.json")
        bos_id = _special_id(backend, tok_cfg.get("bos_token"), model_cfg.get("bos_token_id"))
        return cls(backend, eos_id=eos_id, bos_id=bos_id, chat_template=_pick_template(tok_cfg))

    # -- text <-> ids --------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text maps to its id, nothing is added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() over many texts at once (the backend parallelises it)."""
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    # -- chat ----------------------------------------------------------------------------------

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text the model was trained on for these messages."""
        validate_messages(messages)
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._token_text(self.bos_id),
                eos_token=self._token_text(self.eos_id),
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"chat template rejected the messages: {exc}") from exc

    def _token_text(self, token_id: int | None) -> str:
        if token_id is None:
            return ""
        return self.backend.id_to_token(token_id) or ""

    def _end_of_turn_ids(self, template: str) -> set[int]:
        ids = set()
        for text in END_OF_TURN_TOKENS:
            token_id = self.backend.token_to_id(text)
            if token_id is not None and text in template:
                ids.add(token_id)
        return ids


def validate_messages(messages: object) -> None:
    """Raise InvalidRequestError unless `messages` is a non-empty list of {role, content: str}."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidRequestError(f"messages[{i}] must be a dict with 'role' and 'content'")
        role = msg.get("role")
        if role not in CHAT_ROLES:
            raise InvalidRequestError(
                f"messages[{i}] has role {role!r}; expected one of {', '.join(sorted(CHAT_ROLES))}"
            )
        if not isinstance(msg.get("content"), str):
            raise InvalidRequestError(f"messages[{i}] content must be a string")


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return data


def _special_id(backend: tokenizers.Tokenizer, token: object, fallback: object) -> int | None:
    """Id of a tokenizer_config special token (a string or {'content': ...}), else config.json's id."""
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str) and backend.token_to_id(token) is not None:
        return backend.token_to_id(token)
    if isinstance(fallback, list) and fallback:  # some configs list several eos ids; the first is canonical
        fallback = fallback[0]
    return fallback if isinstance(fallback, int) else None


def _pick_template(tok_cfg: Mapping[str, Any]) -> str | None:
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # older HF form: [{"name": "default", "template": "..."}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None
