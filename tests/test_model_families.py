"""Every supported family, built tiny with transformers, gives transformers' logits and greedy tokens.

For each spec of `tiny_checkpoints` (llama 2/3 with RoPE scaling, biases and tied heads, mistral and
qwen2 with sliding windows, qwen3, gemma3) an HF directory is written and loaded by halo's
LLMEngine in fp32. The engine's logits (observed through `ModelRunner.on_logits`, i.e. the real
batched forward) must equal transformers' full-recompute logits within 1e-4 on a first prefill, on
a continuation after a cached prefix and inside a chunked mixed batch with prefix sharing; greedy
tokens must be identical for 32 steps. Prompts are longer than every sliding window. These are tiny
random models, not the real one: no slow marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is a test dependency (pip install 'halo[test]')")

from halo.engine import LLMEngine, SamplingParams  # noqa: E402
from halo.engine.checkpoint import load_checkpoint  # noqa: E402
from halo.engine.hf_config import config_from_json  # noqa: E402
from halo.errors import ModelLoadError  # noqa: E402
from tiny_checkpoints import CORPUS, SPEC_BY_NAME, SPECS, build  # noqa: E402

TOL = 1e-4
BLOCK = 4
LONG_PROMPT = CORPUS[0] + " " + CORPUS[3]  # ~60 tokens: several windows, many blocks


@pytest.fixture(scope="module", params=[s.name for s in SPECS])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    spec = SPEC_BY_NAME[request.param]
    directory = tmp_path_factory.mktemp(spec.name)
    return spec, directory, build(spec, directory)


class Recorder:
    """(request id, tokens so far, fp32 logits) of every sampled row of every step."""

    def __init__(self, engine: LLMEngine) -> None:
        self.rows: list[tuple[str, int, torch.Tensor]] = []
        engine.runner.on_logits = self.observe

    def observe(self, seqs, logits: torch.Tensor) -> None:
        for seq, row in zip(seqs, logits, strict=True):
            self.rows.append((seq.request_id, seq.num_tokens, row.clone()))


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def check_rows(model, recorder: Recorder, results) -> int:
    """Every recorded row against transformers on the full final sequence; returns rows checked.

    Each sampled token must also be transformers' argmax after the same prefix: by induction over
    the steps, the engine's greedy continuation is then exactly transformers' greedy continuation
    (one causal forward over the final sequence gives transformers' logits after every prefix).
    """
    full = {r.request_id: r.prompt_token_ids + r.token_ids for r in results}
    checked = 0
    for rid, ids in full.items():
        rows = [(n, row) for r, n, row in recorder.rows if r == rid]
        assert rows, rid
        ref = hf_logits(model, ids)
        for n, row in rows:
            err = float((row - ref[n - 1]).abs().max())
            assert err < TOL, f"{rid} at {n} tokens: max |halo - transformers| = {err}"
            if n < len(ids):
                assert ids[n] == int(ref[n - 1].argmax()), f"{rid}: greedy token {n} differs from transformers'"
            checked += 1
    return checked


def test_config_switches(tiny) -> None:
    spec, directory, _ = tiny
    config = config_from_json(directory / "config.json")
    family = {
        "LlamaConfig": "llama",
        "MistralConfig": "mistral",
        "Qwen2Config": "qwen2",
        "Qwen3Config": "qwen3",
        "Gemma3TextConfig": "gemma3",
    }[spec.config_class]
    assert config.family == family
    if spec.window is not None:
        windows = {config.layer(i).window for i in range(config.num_layers)}
        assert spec.window in windows


def test_first_prefill_and_32_greedy_steps_match_transformers(tiny) -> None:
    spec, directory, model = tiny
    engine = LLMEngine(model=str(directory), dtype="fp32", block_size=BLOCK, kv_blocks=128)
    recorder = Recorder(engine)
    ids = engine.tokenizer.encode(LONG_PROMPT)
    assert spec.window is None or len(ids) > 3 * spec.window
    (res,) = engine.generate([ids], SamplingParams(max_tokens=32, ignore_eos=True))
    assert len(res.token_ids) == 32
    assert check_rows(model, recorder, [res]) == 32  # each of the 32 greedy tokens is transformers' choice


def test_continuation_after_cached_prefix_matches_transformers(tiny) -> None:
    _, directory, model = tiny
    engine = LLMEngine(model=str(directory), dtype="fp32", block_size=BLOCK, kv_blocks=128)
    prefix = engine.tokenizer.encode(LONG_PROMPT)
    engine.generate([prefix], SamplingParams(max_tokens=1))
    recorder = Recorder(engine)
    (res,) = engine.generate(
        [prefix + engine.tokenizer.encode(" " + CORPUS[4])], SamplingParams(max_tokens=8, ignore_eos=True)
    )
    assert res.cached_tokens >= len(prefix) - BLOCK
    assert check_rows(model, recorder, [res]) == 8


def test_mixed_chunked_batch_with_prefix_sharing_matches_transformers(tiny) -> None:
    _, directory, model = tiny
    engine = LLMEngine(model=str(directory), dtype="fp32", block_size=BLOCK, kv_blocks=256, max_batch_tokens=24)
    recorder = Recorder(engine)
    tok = engine.tokenizer
    shared = CORPUS[1] + " "
    prompts = [tok.encode(shared + q) for q in ("Was it late?", "Who is the customer?", "How many items?")]
    prompts += [tok.encode("Hi"), tok.encode(LONG_PROMPT + " " + CORPUS[2])]
    results = engine.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    assert sum(r.cached_tokens for r in results[:3]) >= 2 * BLOCK
    assert check_rows(model, recorder, results) == 8 * len(prompts)
    assert engine.block_manager.num_free + engine.block_manager.tree.num_evictable == engine.block_manager.num_blocks


def test_gemma3_nested_under_text_config(tmp_path: Path) -> None:
    """The multimodal wrapper's config (text_config) and weight names (model.language_model.*) load too."""
    from safetensors.torch import load_file, save_file

    text_dir = tmp_path / "text"
    model = build(SPEC_BY_NAME["gemma3"], text_dir)
    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (wrapped / name).write_bytes((text_dir / name).read_bytes())
    text_config = json.loads((text_dir / "config.json").read_text())
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text_config,
        "vision_config": {"model_type": "siglip_vision_model"},
    }
    (wrapped / "config.json").write_text(json.dumps(config))
    tensors = {
        k.replace("model.", "model.language_model.", 1): v
        for k, v in load_file(str(text_dir / "model.safetensors")).items()
    }
    tensors["model.vision_tower.unused.weight"] = torch.zeros(2)
    save_file(tensors, str(wrapped / "model.safetensors"))
    engine = LLMEngine(model=str(wrapped), dtype="fp32", block_size=BLOCK, kv_blocks=64)
    assert engine.config.family == "gemma3" and engine.config.final_softcap == 30.0
    ids = engine.tokenizer.encode(LONG_PROMPT)
    err = float((engine.next_token_logits(ids) - hf_logits(model, ids)[-1]).abs().max())
    assert err < TOL


# -- load errors: an unsupported family or maths-changing key is named, never run wrongly -------

BASE = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 384,
}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"model_type": "phi3"}, "model_type 'phi3' is not supported", id="family"),
        pytest.param(
            {"model_type": "llama", "rope_scaling": {"type": "dynamic", "factor": 2.0}},
            r"rope_scaling\.type 'dynamic' is not supported \(llama\)",
            id="rope-dynamic",
        ),
        pytest.param(
            {"model_type": "qwen2", "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}},
            r"rope_parameters\.rope_type 'longrope' is not supported \(qwen2\)",
            id="rope-longrope",
        ),
        pytest.param(
            {"model_type": "mistral", "hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported", id="activation"
        ),
        pytest.param({"model_type": "llama", "partial_rotary_factor": 0.5}, "partial_rotary_factor", id="partial"),
        pytest.param(
            {"model_type": "qwen3", "quantization_config": {"quant_method": "gptq"}},
            "quantization_config",
            id="quantized",
        ),
        pytest.param(
            {"model_type": "gemma3_text", "use_bidirectional_attention": True},
            "use_bidirectional_attention",
            id="bidirectional",
        ),
        pytest.param(
            {"model_type": "gemma3_text", "layer_types": ["sliding_attention", "chunked_attention"]},
            "layer_types",
            id="layer-type",
        ),
        pytest.param({"model_type": "mistral", "sliding_window": -3}, "sliding_window", id="window"),
    ],
)
def test_unsupported_config_is_a_load_error_naming_the_key(tmp_path: Path, config: dict, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(BASE | config))
    with pytest.raises(ModelLoadError, match=message) as err:
        config_from_json(path)
    assert str(path) in str(err.value)


def test_unsupported_family_directory_fails_at_load(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(BASE | {"model_type": "gpt_neox"}))
    with pytest.raises(ModelLoadError, match="gpt_neox"):
        load_checkpoint(tmp_path)


# -- attention soft-capping (no family here sets it; the CPU paths implement it) -----------------


def test_attention_softcap_paths_match_dense_reference() -> None:
    from halo.engine import cpu_attention
    from halo.engine.kv_cache import KVCache
    from halo.engine.model_config import ModelConfig
    from halo.engine.step_context import PrefillSpan, StepContext

    config = ModelConfig("cap", 1, 64, 4, 2, 16, 128, 384, 1e4, 1e-6, 64, True, attn_softcap=5.0)
    g = torch.Generator().manual_seed(0)
    n, cap, scale, window = 11, 5.0, 0.25, 6
    q, k, v = (3 * torch.randn(n, h, 16, generator=g) for h in (4, 2, 2))
    kv = KVCache(config, 8, BLOCK, torch.float32)
    blocks = torch.tensor([5, 2, 7], dtype=torch.int64)
    slots = torch.tensor([int(blocks[p // BLOCK]) * BLOCK + p % BLOCK for p in range(n)])
    kv.store(0, k, v, slots)

    def dense(rows: range, win: int | None) -> torch.Tensor:
        kk, vv = k.repeat_interleave(2, 1).transpose(0, 1), v.repeat_interleave(2, 1).transpose(0, 1)
        qq = q[list(rows)].transpose(0, 1)
        s = cap * torch.tanh(qq @ kk.transpose(-1, -2) * scale / cap)
        qpos, kpos = torch.tensor(list(rows)).unsqueeze(1), torch.arange(n).unsqueeze(0)
        allowed = (kpos <= qpos) & ((kpos > qpos - win) if win else True)
        return (torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ vv).transpose(0, 1).reshape(len(rows), -1)

    span = PrefillSpan(0, n, n, blocks)
    empty = torch.empty(0, dtype=torch.int64)
    ctx = StepContext(empty, empty, empty, 0, empty, 0, empty, None, (span,), empty)
    for win in (None, window):
        got = cpu_attention.prefill_attention(q, k, v, kv, 0, ctx, scale, window=win, softcap=cap)
        assert torch.allclose(got, dense(range(n), win), atol=1e-5)
    # the last token as a decode row over the pool (torch path: the native kernel cannot soft-cap)
    lens = torch.tensor([n])
    mask = (torch.arange(3 * BLOCK) >= n).view(1, 1, 1, -1)
    dctx = StepContext(empty, empty, empty, 1, blocks, 3, lens, mask, (), empty)
    for win in (None, window):
        got = cpu_attention.decode_attention(q[n - 1 :], kv, 0, dctx, scale, window=win, softcap=cap)
        assert torch.allclose(got, dense(range(n - 1, n), win), atol=1e-5)


# -- the Triton backend honours the same windows (kernels run by the interpreter on CPU) ----------

TRITON_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from halo.engine import LLMEngine, SamplingParams
    directory, prompt = sys.argv[1], sys.argv[2]
    out = {}
    for backend in ("cpu", "triton"):
        eng = LLMEngine(model=directory, dtype="fp32", block_size=4, kv_blocks=64, max_batch_tokens=16,
                        attention_backend=backend)
        rows = []
        eng.runner.on_logits = lambda seqs, logits: rows.extend(logits.tolist())
        ids = eng.tokenizer.encode(prompt)
        res = eng.generate([ids, ids[:-3]], SamplingParams(max_tokens=4, ignore_eos=True))
        out[backend] = {"tokens": [r.token_ids for r in res], "rows": rows, "cached": res[1].cached_tokens}
    err = max(abs(a - b) for ra, rb in zip(out["cpu"]["rows"], out["triton"]["rows"]) for a, b in zip(ra, rb))
    print(json.dumps({"tokens": [out[b]["tokens"] for b in ("cpu", "triton")], "err": err,
                      "rows": [len(out[b]["rows"]) for b in ("cpu", "triton")], "cached": out["cpu"]["cached"]}))
""")


@pytest.mark.parametrize("name", ["gemma3"])  # interleaved windowed and global layers
def test_triton_backend_honours_sliding_windows_under_interpreter(name: str, tmp_path: Path) -> None:
    pytest.importorskip("triton")
    directory = tmp_path / name
    build(SPEC_BY_NAME[name], directory)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, str(directory), CORPUS[1]],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu_tokens, triton_tokens = out["tokens"]
    assert triton_tokens == cpu_tokens
    assert out["rows"][0] == out["rows"][1] == 8
    assert out["cached"] > 0  # the second prompt's prefill ran over a cached prefix through the kernel
    assert out["err"] < TOL
