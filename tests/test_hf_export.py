"""`halo export-hf`: the default GGUF written as an HF Llama directory (what vLLM serves for the
`vllm-per-call` baseline) loads back through halo's own HF loader as the same model — same config,
bit-identical weights in HF q/k order, the same tokenizer and chat rendering, the same greedy tokens."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from halo.cli import main as cli_main
from halo.engine import LLMEngine, SamplingParams
from halo.engine.checkpoint import Checkpoint, load_checkpoint
from halo.engine.gguf_checkpoint import open_gguf
from halo.engine.hf_export import MARKER, export_hf
from halo.errors import ModelLoadError

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Name a color."}],
    [{"role": "user", "content": "List three prime numbers: 2, 3,"}],
]
TEXTS = ["Hello, world!", "  leading spaces and 12345 digits", "<|im_start|>user\nünïcödé 🙂<|im_end|>\n", ""]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_hf(tmp_path_factory.mktemp("export") / "smollm2-hf")


@pytest.fixture(scope="module")
def loaded(exported: Path) -> Checkpoint:
    return load_checkpoint(exported)


@pytest.mark.slow
def test_directory_has_what_an_hf_server_reads(exported: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"generation_config.json", MARKER} <= names
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    tok_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_config["chat_template"]
    assert tok_config["clean_up_tokenization_spaces"] is False and tok_config["model_max_length"] == 8192


@pytest.mark.slow
def test_config_and_weights_are_identical(checkpoint: Checkpoint, loaded: Checkpoint) -> None:
    assert loaded.config == replace(checkpoint.config, name="smollm2-hf")  # an HF directory is named by its folder
    assert loaded.weights.keys() == checkpoint.weights.keys()
    different = [n for n, w in checkpoint.weights.items() if not torch.equal(w, loaded.weights[n])]
    assert different == []


@pytest.mark.slow
def test_q_and_k_rows_are_in_hf_order(exported: Path, loaded: Checkpoint) -> None:
    """llama.cpp's converter permutes HF q/k rows for interleaved RoPE; applying that permutation to
    the exported rows must give the GGUF's stored tensors back (an independent check of the layout:
    save and load alone are inverses and would not notice a wrong order)."""
    marker = json.loads((exported / MARKER).read_text())
    reader = open_gguf(Path(marker["source"]))
    stored = {t.name: t for t in reader.tensors}
    c = loaded.config

    def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:  # convert_hf_to_gguf.py's LlamaModel.permute
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    for layer in (0, c.num_layers - 1):
        for canon, gguf_name, heads in (("wq", "attn_q", c.num_heads), ("wk", "attn_k", c.num_kv_heads)):
            t = stored[f"blk.{layer}.{gguf_name}.weight"]
            raw = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            hf = loaded.weights[f"layers.{layer}.{canon}"].numpy()
            assert np.array_equal(llama_cpp_permute(hf, heads), raw), (layer, canon)
            assert not np.array_equal(hf, raw)  # the permutation is not the identity for this model


@pytest.mark.slow
def test_tokenizer_behaves_the_same(checkpoint: Checkpoint, loaded: Checkpoint, exported: Path) -> None:
    a, b = checkpoint.tokenizer, loaded.tokenizer
    assert (a.eos_id, a.bos_id, a.vocab_size, a.stop_ids) == (b.eos_id, b.bos_id, b.vocab_size, b.stop_ids)
    assert a.chat_template == b.chat_template
    for text in TEXTS:
        ids = a.encode(text)
        assert b.encode(text) == ids and b.decode(ids) == a.decode(ids)
    for messages in PROMPTS:
        assert b.render_chat(messages) == a.render_chat(messages)
    generation = json.loads((exported / "generation_config.json").read_text())
    assert set(generation["eos_token_id"]) == set(a.stop_ids) and generation["bos_token_id"] == a.bos_id


@pytest.mark.slow
def test_greedy_generation_is_token_identical(checkpoint: Checkpoint, exported: Path) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.0)
    expected = LLMEngine(model=checkpoint, dtype="fp32").generate(PROMPTS, params)
    got = LLMEngine(model=exported, dtype="fp32").generate(PROMPTS, params)
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]
    assert all(r.token_ids for r in expected)


@pytest.mark.slow
def test_an_up_to_date_export_is_reused(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = exported / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert cli_main(["export-hf", str(exported)]) == 0  # the command line, on the cached directory
    assert capsys.readouterr().out.strip() == str(exported)
    assert weights.stat().st_mtime_ns == before


def test_a_foreign_directory_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="not a halo export"):
        export_hf(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
