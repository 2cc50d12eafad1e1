"""The conversion cache (engine/checkpoint_cache.py): hits are bit-equal, bad entries are rebuilt, never used.

Tiny random checkpoints throughout (tests/tiny_gguf.py, and an HF directory written from it); the
default model appears only in the slow check that its cached load generates the same tokens.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from halo.engine import LLMEngine, SamplingParams, checkpoint_cache, gguf_checkpoint
from halo.engine.checkpoint import _convert, load_checkpoint, load_tokenizer
from halo.engine.checkpoint_cache import CacheLoad, cached_tokenizer, entry_for, load_through_cache, read_entry
from halo.engine.checkpoint_layout import Checkpoint
from halo.engine.hf_export import write_hf_directory
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_gguf import write_tiny_gguf

PROMPT = "the cat in the hat"


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def load(source: Path, cache: Path, dtype: torch.dtype = torch.float32) -> CacheLoad:
    return load_through_cache(source, dtype, cache, _convert)


def assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.config == b.config and a.path == b.path
    assert a.weights.keys() == b.weights.keys()
    for name in a.weights:
        assert a.weights[name].dtype == b.weights[name].dtype, name
        assert torch.equal(a.weights[name], b.weights[name]), name
    assert a.tokenizer.encode(PROMPT) == b.tokenizer.encode(PROMPT)
    assert a.tokenizer.stop_ids == b.tokenizer.stop_ids and a.tokenizer.chat_template == b.tokenizer.chat_template
    chat = [{"role": "user", "content": "hi"}]
    assert a.tokenizer.render_chat(chat) == b.tokenizer.render_chat(chat)


def greedy(ckpt: Checkpoint) -> list[int]:
    engine = LLMEngine(ckpt, dtype="fp32", kv_blocks=32, swap_space_gb=0)
    return list(engine.generate([PROMPT], SamplingParams(max_tokens=12, ignore_eos=True))[0].token_ids)


def data_offset(path: Path, tensor: str) -> int:
    """Byte offset in a safetensors file where ``tensor``'s data starts."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    return 8 + header_len + header[tensor]["data_offsets"][0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_hit_is_bit_equal_to_a_fresh_conversion(gguf_file: Path, cache: Path, dtype: torch.dtype) -> None:
    fresh = load_checkpoint(gguf_file, use_cache=False, dtype=dtype)
    first = load(gguf_file, cache, dtype)
    second = load(gguf_file, cache, dtype)
    assert (first.outcome, second.outcome) == ("built", "hit")
    assert first.entry is not None and first.entry.path.is_file()
    assert_same(first.checkpoint, fresh)
    assert_same(second.checkpoint, fresh)
    # the entry is named for what it holds: one file per source and dtype
    assert [p.name for p in (cache / "checkpoints").iterdir()] == [first.entry.path.name]


def test_a_hit_generates_the_same_tokens(gguf_file: Path, cache: Path) -> None:
    fresh = load_checkpoint(gguf_file, use_cache=False)
    load(gguf_file, cache)
    hit = load(gguf_file, cache)
    assert hit.outcome == "hit"
    assert greedy(hit.checkpoint) == greedy(fresh)


def test_an_hf_directory_is_cached_too(gguf_file: Path, tmp_path: Path, cache: Path) -> None:
    hf_dir = tmp_path / "hf"
    write_hf_directory(load_checkpoint(gguf_file, use_cache=False), hf_dir)
    fresh = load_checkpoint(hf_dir, use_cache=False)
    assert load(hf_dir, cache).outcome == "built"
    hit = load(hf_dir, cache)
    assert hit.outcome == "hit"
    assert_same(hit.checkpoint, fresh)
    # any file of the directory is part of its identity: touching the tokenizer is a new entry
    os.utime(hf_dir / "tokenizer.json", ns=(1, 1))
    assert load(hf_dir, cache).outcome == "built"


def test_load_checkpoint_and_the_engine_go_through_the_cache(gguf_file: Path, cache: Path) -> None:
    load_checkpoint(gguf_file, cache_dir=cache)
    entry = entry_for(gguf_file, torch.float32, cache)
    assert entry.path.is_file()
    engine = LLMEngine(str(gguf_file), dtype="fp32", kv_blocks=32, swap_space_gb=0, cache_dir=cache)
    assert engine.model_path == gguf_file
    assert len(list((cache / "checkpoints").iterdir())) == 1


def test_a_truncated_entry_is_rebuilt(gguf_file: Path, cache: Path) -> None:
    fresh = load_checkpoint(gguf_file, use_cache=False)
    entry = load(gguf_file, cache).entry
    assert entry is not None
    size = entry.path.stat().st_size
    with open(entry.path, "rb+") as f:
        f.truncate(size // 2)
    assert read_entry(entry)[0] is None
    again = load(gguf_file, cache)
    assert again.outcome == "built" and "cannot be read" in again.reason
    assert_same(again.checkpoint, fresh)
    assert entry.path.stat().st_size == size  # rewritten whole
    assert load(gguf_file, cache).outcome == "hit"


def test_a_damaged_tensor_is_detected_and_never_used(gguf_file: Path, cache: Path) -> None:
    fresh = load_checkpoint(gguf_file, use_cache=False)
    entry = load(gguf_file, cache).entry
    assert entry is not None
    offset = data_offset(entry.path, "layers.1.wq")
    with open(entry.path, "rb+") as f:
        f.seek(offset)
        f.write(b"\x7f" * 64)  # a valid file still: only the digest can tell
    ckpt, reason = read_entry(entry)
    assert ckpt is None and "digest" in reason
    again = load(gguf_file, cache)
    assert again.outcome == "built" and "digest" in again.reason
    # had the damaged entry been used, this tensor would differ from a fresh conversion
    assert torch.equal(again.checkpoint.weights["layers.1.wq"], fresh.weights["layers.1.wq"])
    assert_same(again.checkpoint, fresh)


@pytest.mark.parametrize("damage", ["header_length", "header_json", "foreign_file"])
def test_a_bad_header_or_a_foreign_file_is_rebuilt(gguf_file: Path, cache: Path, damage: str) -> None:
    fresh = load_checkpoint(gguf_file, use_cache=False)
    entry = load(gguf_file, cache).entry
    assert entry is not None
    raw = bytearray(entry.path.read_bytes())
    if damage == "header_length":
        raw[:8] = struct.pack("<Q", len(raw) * 2)
    elif damage == "header_json":
        raw[8:16] = b"not json"
    else:  # a whole, valid entry of another dtype renamed to this one's name: its key tells
        other = load(gguf_file, cache, torch.bfloat16).entry
        assert other is not None
        raw = bytearray(other.path.read_bytes())
    entry.path.write_bytes(bytes(raw))
    again = load(gguf_file, cache)
    assert again.outcome == "built", damage
    assert_same(again.checkpoint, fresh)


def test_a_damaged_config_or_tokenizer_is_detected(gguf_file: Path, cache: Path) -> None:
    fresh = load_checkpoint(gguf_file, use_cache=False)
    entry = load(gguf_file, cache).entry
    assert entry is not None
    with safe_open(str(entry.path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    blob = meta["halo.checkpoint"]
    meta["halo.checkpoint"] = blob[:100] + ("A" if blob[100] != "A" else "B") + blob[101:]
    save_file(tensors, str(entry.path), metadata=meta)  # a whole file, right key and tensors, one byte off
    ckpt, reason = read_entry(entry)
    assert ckpt is None and "config and tokenizer" in reason
    assert cached_tokenizer(gguf_file, cache) is None
    again = load(gguf_file, cache)
    assert again.outcome == "built"
    assert_same(again.checkpoint, fresh)


def test_load_tokenizer_reads_the_entry_header(gguf_file: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = load_checkpoint(gguf_file, use_cache=False).tokenizer
    load_checkpoint(gguf_file, cache_dir=cache)

    def no_gguf(path: Path) -> None:
        raise AssertionError(f"{path} was parsed although its entry holds the tokenizer")

    monkeypatch.setattr(gguf_checkpoint, "load_gguf_tokenizer", no_gguf)  # where checkpoint.py takes it from
    got = load_tokenizer(gguf_file, cache_dir=cache)
    assert got.encode(PROMPT) == want.encode(PROMPT) and got.stop_ids == want.stop_ids
    with pytest.raises(AssertionError, match="was parsed"):  # no entry in another cache: from the file
        load_tokenizer(gguf_file, cache_dir=cache.with_name("other"))


def test_a_changed_source_invalidates_its_entry(gguf_file: Path, cache: Path) -> None:
    old = load(gguf_file, cache).entry
    assert old is not None
    st = gguf_file.stat()
    os.utime(gguf_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: same bytes, new mtime
    touched = load(gguf_file, cache)
    assert touched.outcome == "built" and touched.entry is not None and touched.entry.path != old.path
    assert not old.path.exists()  # the stale entry of this source is removed when the new one is written
    write_tiny_gguf(gguf_file, seed=1)  # new content (and so size/mtime/head hash)
    fresh = load_checkpoint(gguf_file, use_cache=False)
    changed = load(gguf_file, cache)
    assert changed.outcome == "built"
    assert_same(changed.checkpoint, fresh)
    assert not torch.equal(changed.checkpoint.weights["embed"], touched.checkpoint.weights["embed"])


def test_entries_of_the_same_files_at_another_dtype_or_halo_are_kept_while_used(
    gguf_file: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two dtypes in turn, or two Halo installs sharing the cache dir, used to remove each other's entry
    # at every write, so each start converted the model again.
    fp32 = load(gguf_file, cache, torch.float32).entry
    bf16 = load(gguf_file, cache, torch.bfloat16).entry
    assert fp32 is not None and bf16 is not None and fp32.path.exists() and bf16.path.exists()
    checkpoint_cache.code_fingerprint.cache_clear()
    monkeypatch.setattr(checkpoint_cache, "LIBRARIES", (*checkpoint_cache.LIBRARIES, "another-halo"))
    other = load(gguf_file, cache, torch.float32)  # another Halo's key for the same files
    assert other.outcome == "built" and other.entry is not None and other.entry.path != fp32.path
    assert fp32.path.exists() and bf16.path.exists()
    assert load(gguf_file, cache, torch.float32).outcome == "hit"
    # an entry nobody used for the age limit is removed at the next write
    old = os.stat(bf16.path).st_mtime - checkpoint_cache.UNUSED_ENTRY_S - 60
    os.utime(bf16.path, (old, old))
    checkpoint_cache.code_fingerprint.cache_clear()
    monkeypatch.setattr(checkpoint_cache, "LIBRARIES", (*checkpoint_cache.LIBRARIES, "a-third-halo"))
    assert load(gguf_file, cache, torch.float32).outcome == "built"
    assert not bf16.path.exists() and fp32.path.exists()
    checkpoint_cache.code_fingerprint.cache_clear()


def test_an_entry_whose_source_is_gone_is_pruned(tmp_path: Path, cache: Path) -> None:
    a = write_tiny_gguf(tmp_path / "a.gguf")
    b = write_tiny_gguf(tmp_path / "b.gguf", seed=2)
    entry_a = load(a, cache).entry
    assert entry_a is not None
    a.unlink()
    load(b, cache)
    assert not entry_a.path.exists()


def test_an_unwritable_cache_still_loads(gguf_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder would go")
    fresh = load_checkpoint(gguf_file, use_cache=False)
    got = load(gguf_file, blocker)
    assert got.outcome == "uncached"
    assert_same(got.checkpoint, fresh)


def test_an_entry_that_would_crowd_the_disk_is_not_written(
    gguf_file: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint_cache, "MAX_DISK_FRACTION", 0.0)
    got = load(gguf_file, cache)
    assert got.outcome == "uncached"
    assert not list((cache / "checkpoints").glob("*.safetensors"))
    assert_same(got.checkpoint, load_checkpoint(gguf_file, use_cache=False))


def test_two_processes_loading_at_once_both_succeed(gguf_file: Path, cache: Path) -> None:
    script = textwrap.dedent(
        """
        import hashlib, sys
        from pathlib import Path
        import torch
        from halo.engine.checkpoint import _convert
        from halo.engine.checkpoint_cache import load_through_cache
        got = load_through_cache(Path(sys.argv[1]), torch.float32, Path(sys.argv[2]), _convert)
        digest = hashlib.sha256()
        for name in sorted(got.checkpoint.weights):
            digest.update(got.checkpoint.weights[name].numpy().tobytes())
        print(got.outcome, digest.hexdigest())
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(gguf_file), str(cache)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0][1] == outs[1][1]
    assert {o[0] for o in outs} <= {"built", "hit"}
    after = load(gguf_file, cache)
    assert after.outcome == "hit"
    assert not [p for p in (cache / "checkpoints").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_the_default_model_from_the_cache_generates_the_same_tokens(tmp_path: Path) -> None:
    params = SamplingParams(max_tokens=16)
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    fresh = LLMEngine(load_checkpoint(use_cache=False), dtype="fp32", swap_space_gb=0)
    want = fresh.generate([prompt], params)[0].token_ids
    del fresh
    LLMEngine(dtype="fp32", cache_dir=tmp_path, swap_space_gb=0)  # converts and stores
    hit = LLMEngine(dtype="fp32", cache_dir=tmp_path, swap_space_gb=0)
    assert hit.generate([prompt], params)[0].token_ids == want
