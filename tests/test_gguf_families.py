"""Every family as a GGUF file (written like llama.cpp's converter writes it) gives transformers' logits.

`tiny_checkpoints.write_gguf` turns each tiny transformers model into a GGUF: llama.cpp's tensor
names, q/k rows permuted for llama only, Gemma's norms stored as ``1 + w``, Llama 3 scaling as a
``rope_freqs`` tensor, gemma3's window pattern and local RoPE base as keys. Halo loads the file and
must match transformers (fed exactly the file's numbers) within 1e-4 in fp32 for a prefill and 32
greedy steps, in F32, F16 and Q8_0. The GGUF config must be the HF config's switches, and a file
that asks for what halo does not implement is a load error naming the key. Tiny random models: no
slow marker.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="transformers is a test dependency (pip install 'halo[test]')")

from halo.engine import LLMEngine, SamplingParams  # noqa: E402
from halo.engine.gguf_checkpoint import config_from_metadata, open_gguf, read_metadata  # noqa: E402
from halo.engine.hf_config import config_from_json  # noqa: E402
from halo.engine.rope import inverse_frequencies  # noqa: E402
from halo.errors import ModelLoadError  # noqa: E402
from test_model_families import BLOCK, LONG_PROMPT, Recorder, check_rows  # noqa: E402
from tiny_checkpoints import CORPUS, GGUF_SPEC_BY_NAME, GGUF_SPECS, build, write_gguf, write_metadata_gguf  # noqa: E402


def tiny_gguf(tmp: Path, name: str, quant: str = "F32"):
    spec = GGUF_SPEC_BY_NAME[name]
    model = build(spec, tmp)
    held = write_gguf(spec, model, tmp, tmp / f"{name}.gguf", quant)
    model.load_state_dict(held, strict=False)  # the reference computes with the file's numbers
    return spec, tmp / f"{name}.gguf", model


@pytest.mark.parametrize(
    ("name", "quant"),
    [(s.name, "F32") for s in GGUF_SPECS] + [("qwen3", "F16"), ("llama3", "Q8_0"), ("gemma3", "Q8_0")],
)
def test_gguf_prefill_and_32_greedy_steps_match_transformers(tmp_path: Path, name: str, quant: str) -> None:
    spec, path, model = tiny_gguf(tmp_path, name, quant)
    engine = LLMEngine(model=str(path), dtype="fp32", block_size=BLOCK, kv_blocks=128)
    assert engine.config.family == (
        "mistral" if name == "mistral" else config_from_json(tmp_path / "config.json").family
    )
    recorder = Recorder(engine)
    ids = engine.tokenizer.encode(LONG_PROMPT)
    assert ids == engine.tokenizer.encode_prompt(LONG_PROMPT)  # the tiny vocab asks for no BOS
    assert spec.window is None or len(ids) > 3 * spec.window
    (res,) = engine.generate([ids], SamplingParams(max_tokens=32, ignore_eos=True))
    assert check_rows(model, recorder, [res]) == 32


def test_gguf_mixed_batch_with_prefix_sharing_matches_transformers(tmp_path: Path) -> None:
    _, path, model = tiny_gguf(tmp_path, "gemma3")
    engine = LLMEngine(model=str(path), dtype="fp32", block_size=BLOCK, kv_blocks=256, max_batch_tokens=24)
    recorder = Recorder(engine)
    tok = engine.tokenizer
    shared = CORPUS[1] + " "
    prompts = [tok.encode(shared + q) for q in ("Was it late?", "Who is the customer?")]
    prompts.append(tok.encode(LONG_PROMPT + " " + CORPUS[2]))
    results = engine.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    assert sum(r.cached_tokens for r in results[:2]) >= BLOCK
    assert check_rows(model, recorder, results) == 8 * len(prompts)


@pytest.mark.parametrize("name", [s.name for s in GGUF_SPECS])
def test_gguf_config_is_the_hf_config(tmp_path: Path, name: str) -> None:
    """Same switches from GGUF metadata as from config.json; RoPE compared as frequencies (the
    llama3 scaling recovered from rope_freqs may pick another, equivalent original context)."""
    _, path, _ = tiny_gguf(tmp_path, name)
    reader = open_gguf(path)
    got = config_from_metadata(path, read_metadata(reader), reader)
    want = config_from_json(tmp_path / "config.json")
    if name == "mistral":
        want = replace(want, family="mistral")
    assert got.rms_eps == pytest.approx(want.rms_eps, rel=1e-6)  # GGUF stores it as f32
    skip = {"name", "layers", "rope_theta", "rms_eps"}
    assert {f.name: getattr(got, f.name) for f in fields(got) if f.name not in skip} == {
        f.name: getattr(want, f.name) for f in fields(want) if f.name not in skip
    }
    for i in range(want.num_layers):
        a, b = got.layer(i), want.layer(i)
        assert a.window == b.window and a.rope_theta == b.rope_theta
        fa, sa = inverse_frequencies(got.head_dim, a.rope_theta, a.rope_scaling)
        fb, sb = inverse_frequencies(want.head_dim, b.rope_theta, b.rope_scaling)
        assert torch.allclose(fa, fb, rtol=1e-6) and sa == pytest.approx(sb)


# -- load errors: what halo does not implement is named, never run wrongly -----------------------


BASE = {
    "block_count": 2,
    "context_length": 64,
    "embedding_length": 64,
    "feed_forward_length": 128,
    "attention.head_count": 4,
    "attention.layer_norm_rms_epsilon": 1e-6,
}


@pytest.mark.parametrize(
    ("arch", "extra", "message"),
    [
        pytest.param("phi3", {}, r"general\.architecture 'phi3' is not supported", id="architecture"),
        pytest.param("llama", {"llama.expert_count": 8}, r"llama\.expert_count is not supported", id="moe"),
        pytest.param("qwen2", {"qwen2.rope.scaling.type": "longrope"}, "rope.scaling.type 'longrope'", id="rope"),
        pytest.param("qwen2", {"qwen2.attention.sliding_window": 8}, "qwen2.attention.sliding_window", id="window"),
        pytest.param("llama", {"llama.rope.dimension_count": 8}, "partial rotary", id="partial"),
        pytest.param(
            "gemma3", {"gemma3.attention.sliding_window": 8, "gemma3.logit_scale": 2.0}, "logit_scale", id="k"
        ),
    ],
)
def test_unsupported_gguf_is_a_load_error_naming_the_key(tmp_path: Path, arch: str, extra: dict, message: str) -> None:
    meta = {f"{arch}.{k}": v for k, v in BASE.items()} | extra
    path = write_metadata_gguf(tmp_path / "bad.gguf", arch, meta)
    reader = open_gguf(path)
    with pytest.raises(ModelLoadError, match=message) as err:
        config_from_metadata(path, read_metadata(reader), reader)
    assert str(path) in str(err.value)


def test_unread_tensor_is_a_load_error(tmp_path: Path) -> None:
    spec = GGUF_SPEC_BY_NAME["qwen3"]
    path = tmp_path / "extra.gguf"
    write_gguf(spec, build(spec, tmp_path), tmp_path, path, extra={"blk.0.layer_output_norm.weight": np.ones(64)})
    with pytest.raises(ModelLoadError, match=r"tensors blk\.0\.layer_output_norm\.weight are not supported"):
        LLMEngine(model=str(path), dtype="fp32")
