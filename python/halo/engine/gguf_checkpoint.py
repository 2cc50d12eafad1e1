"""Read a GGUF file into a Checkpoint: metadata → ModelConfig, tensors dequantized to fp32 under canonical names.

`general.architecture` names the family: llama (mistral too, when the file sets a sliding window or
is named so), qwen2, qwen3, gemma3. The `{arch}.*` keys fill the same `ModelConfig` switches the HF
loader fills; a key this loader does not know is a ModelLoadError naming it (a GGUF key changes the
maths more often than not, so unknown keys are refused, never skipped). Two things llama.cpp's
converter does to the tensors are undone so every checkpoint is in HF's convention:
  - llama only: the rows of attn_q/attn_k (weights and biases) are permuted for GGML's interleaved
    RoPE; qwen2, qwen3 and gemma3 use NeoX RoPE in llama.cpp and are stored unpermuted.
  - gemma3: every ``*norm.weight`` is stored with Gemma's ``+1`` folded in (llama.cpp multiplies by
    ``w`` where transformers multiplies by ``1 + w``), so 1 is subtracted (as transformers' GGUF
    loader does; the real Gemma 3 270M check compares logits with transformers).
Llama 3.1-style RoPE scaling arrives as a ``rope_freqs`` tensor of per-dimension divisors; it is
turned back into the `llama3` RopeScaling that reproduces it, or refused.

The file itself is read by `GGUFFile` (header, key/values, tensor infos over one memory map), not by
`gguf.GGUFReader`: that reader builds a numpy view per array element, ~40 s for the 262k-token
vocabulary of Gemma 3 where this one decodes string arrays in one loop and numeric arrays with one
`np.frombuffer` (`tests/test_gguf_file.py` holds it to GGUFReader's values). The `gguf` package
still names the tensor types and dequantizes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType
from gguf.quants import quant_shape_to_byte_shape

from halo.engine.checkpoint_layout import Checkpoint, check_weights, layer_shapes
from halo.engine.model_config import FAMILIES, LayerAttention, ModelConfig, RopeScaling
from halo.engine.rope import inverse_frequencies
from halo.engine.tokenizer import Tokenizer
from halo.errors import ModelLoadError

# general.architecture → family (llama files may turn out to be mistral, see _family)
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3"}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)

# canonical per-layer name → GGUF per-layer tensor name (under blk.N.)
LAYER_TENSORS = {
    "attn_norm": "attn_norm.weight",
    "wq": "attn_q.weight",
    "wk": "attn_k.weight",
    "wv": "attn_v.weight",
    "wo": "attn_output.weight",
    "ffn_norm": "ffn_norm.weight",  # the norm before the MLP in every family (gemma3's FFN_PRE_NORM)
    "w_gate": "ffn_gate.weight",
    "w_up": "ffn_up.weight",
    "w_down": "ffn_down.weight",
    "bq": "attn_q.bias",
    "bk": "attn_k.bias",
    "bv": "attn_v.bias",
    "bo": "attn_output.bias",
    "b_gate": "ffn_gate.bias",
    "b_up": "ffn_up.bias",
    "b_down": "ffn_down.bias",
    "q_norm": "attn_q_norm.weight",
    "k_norm": "attn_k_norm.weight",
    "attn_post_norm": "post_attention_norm.weight",
    "ffn_post_norm": "post_ffw_norm.weight",
}
ROPE_FREQS = "rope_freqs.weight"

# `{arch}.` keys read below; anything else under `{arch}.` is refused by name.
HANDLED_KEYS = frozenset(
    {
        "block_count",
        "context_length",
        "embedding_length",
        "feed_forward_length",
        "vocab_size",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.key_length",
        "attention.value_length",
        "attention.layer_norm_rms_epsilon",
        "attention.sliding_window",
        "attention.sliding_window_pattern",
        "rope.dimension_count",
        "rope.freq_base",
        "rope.freq_base_swa",
        "rope.scaling.type",
        "rope.scaling.factor",
        "rope.scaling.original_context_length",
        "rope.scaling.finetuned",  # informative: whether the model was trained with the scaling
        "rope.scaling.yarn_beta_fast",
        "rope.scaling.yarn_beta_slow",
        "final_logit_softcapping",
        # Gemma 2's attention soft-cap: Gemma 3 replaced it by q/k norms and neither transformers
        # nor llama.cpp applies it for gemma3, so it is accepted there and ignored (as in hf_config).
        "attn_logit_softcapping",
    }
)
# Keys only some families may carry; elsewhere they are refused like unknown ones.
FAMILY_KEYS = {
    "attention.sliding_window": ("llama", "mistral", "gemma3"),
    "attention.sliding_window_pattern": ("gemma3",),
    "rope.freq_base_swa": ("gemma3",),
    "final_logit_softcapping": ("gemma3",),
    "attn_logit_softcapping": ("gemma3",),
}
GEMMA3_SWA_PATTERN = 6  # llama.cpp hard-codes every sixth layer global for gemma3
GEMMA3_SWA_THETA = 10000.0  # and the local layers' RoPE base


def load_gguf_checkpoint(path: Path) -> Checkpoint:
    """Load a GGUF file; every failure is a ModelLoadError that names the file."""
    reader = open_gguf(path)
    meta = read_metadata(reader)
    config = config_from_metadata(path, meta, reader)
    sources = tensor_sources(path, reader, config)  # cheap checks first, before seconds of dequantizing
    tokenizer = Tokenizer.from_gguf_metadata(meta, source=str(path))
    weights = dequantize_weights(path, reader, config, sources)
    del sources, reader  # drops the memmap; only the fp32 torch copies stay alive
    check_weights(path, config, weights)
    return Checkpoint(path=path, config=config, weights=weights, tokenizer=tokenizer)


def load_gguf_tokenizer(path: Path) -> Tokenizer:
    """Only the tokenizer of a GGUF file (no tensors are dequantized)."""
    return Tokenizer.from_gguf_metadata(read_metadata(open_gguf(path)), source=str(path))


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: `shape` in GGML order (fastest dimension first, as the file stores
    it), `data` a read-only view of the memory map (elements for float/int types, bytes otherwise)."""

    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    data_offset: int
    data: np.ndarray


@dataclass(frozen=True)
class GGUFFile:
    """A memory-mapped GGUF file: its key/value metadata (plain Python values) and its tensors."""

    path: Path
    data: np.ndarray  # the whole file, memory-mapped
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


# GGUF value types (gguf.GGUFValueType): numpy dtypes of the scalar ones, then string and array.
_SCALAR_DTYPES = {0: "u1", 1: "i1", 2: "u2", 3: "i2", 4: "u4", 5: "i4", 6: "f4", 7: "?", 10: "u8", 11: "i8", 12: "f8"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_ELEMENT_DTYPES = {  # float and int tensor types whose data is viewed as elements, not bytes
    GGMLQuantizationType.F32: "f4",
    GGMLQuantizationType.F16: "f2",
    GGMLQuantizationType.F64: "f8",
    GGMLQuantizationType.I8: "i1",
    GGMLQuantizationType.I16: "i2",
    GGMLQuantizationType.I32: "i4",
    GGMLQuantizationType.I64: "i8",
}
_VERSIONS = (2, 3)


class _Corrupt(ValueError):
    """What `_Cursor` raises where the bytes are not a GGUF file."""


class _Cursor:
    """Reads GGUF values in the file's byte order from a position that moves forward."""

    def __init__(self, buf: memoryview, order: str) -> None:
        self.buf, self.pos, self.order = buf, 0, order
        self._u32, self._u64 = struct.Struct(order + "I"), struct.Struct(order + "Q")

    def take(self, size: int) -> int:
        """The position of the next `size` bytes, which the cursor moves past."""
        start = self.pos
        if size < 0 or start + size > len(self.buf):
            raise _Corrupt(f"{size} bytes at offset {start} run past the end of the file ({len(self.buf)} bytes)")
        self.pos = start + size
        return start

    def u32(self) -> int:
        return self._u32.unpack_from(self.buf, self.take(4))[0]

    def u64(self) -> int:
        return self._u64.unpack_from(self.buf, self.take(8))[0]

    def string(self) -> str:
        size = self.u64()
        start = self.take(size)
        return str(self.buf[start : start + size], "utf-8")

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            return self.array()
        dtype = self._dtype(kind)
        return np.frombuffer(self.buf, dtype, 1, self.take(dtype.itemsize))[0].item()

    def array(self) -> list[Any]:
        kind, count = self.u32(), self.u64()
        if kind == _STRING:
            return self._strings(count)
        if kind == _ARRAY:  # nested arrays are rare (no key halo reads): element by element
            return [self.array() for _ in range(count)]
        dtype = self._dtype(kind)
        return np.frombuffer(self.buf, dtype, count, self.take(count * dtype.itemsize)).tolist()

    def _strings(self, count: int) -> list[str]:
        # The hot loop of a large vocabulary (Gemma 3: 262k tokens): locals only, one bound check each.
        buf, pos, end, unpack = self.buf, self.pos, len(self.buf), self._u64.unpack_from
        if count * 8 > end - pos:
            raise _Corrupt(f"an array of {count} strings at offset {pos} cannot fit in the file")
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if pos + 8 > end:
                raise _Corrupt(f"a string at offset {pos} runs past the end of the file")
            (size,) = unpack(buf, pos)
            pos += 8
            if pos + size > end:
                raise _Corrupt(f"a string of {size} bytes at offset {pos} runs past the end of the file")
            append(str(buf[pos : pos + size], "utf-8"))
            pos += size
        self.pos = pos
        return out

    def _dtype(self, kind: int) -> np.dtype:
        name = _SCALAR_DTYPES.get(kind)
        if name is None:
            raise _Corrupt(f"unknown value type {kind} at offset {self.pos}")
        return np.dtype(self.order + name)


def read_gguf(path: Path) -> GGUFFile:
    """Parse the header, metadata and tensor infos of a GGUF file (version 2 or 3, either byte order).

    Raises ValueError (or UnicodeDecodeError) where the bytes are not a well-formed GGUF file, e.g.
    truncated; `open_gguf` turns that into a ModelLoadError."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(data), "<")
    if cur.u32() != GGUF_MAGIC:
        raise _Corrupt("GGUF magic invalid")
    version = cur.u32()
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        cur = _Cursor(cur.buf, ">")
        cur.pos = 4
        version = cur.u32()
    if version not in _VERSIONS:
        raise _Corrupt(f"GGUF version {version} is not supported (only {', '.join(map(str, _VERSIONS))})")
    tensor_count, kv_count = cur.u64(), cur.u64()
    metadata: dict[str, Any] = {}
    alignment = GGUF_DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = cur.string()
        kind = cur.u32()
        if key in metadata:
            raise _Corrupt(f"duplicate metadata key {key}")
        metadata[key] = cur.value(kind)
        if key == "general.alignment":
            alignment = metadata[key]
            if kind != _UINT32 or alignment <= 0 or alignment & (alignment - 1):
                raise _Corrupt("general.alignment must be a uint32 power of two")
    infos = []
    for _ in range(tensor_count):
        name = cur.string()
        dims = tuple(cur.u64() for _ in range(cur.u32()))
        infos.append((name, dims, GGMLQuantizationType(cur.u32()), cur.u64()))
    start = -(-cur.pos // alignment) * alignment
    tensors: list[GGUFTensor] = []
    for name, dims, kind, offset in infos:
        tensors.append(_tensor(path, data, name, dims, kind, start + offset, cur.order))
    if len({t.name for t in tensors}) != len(tensors):
        raise _Corrupt("duplicate tensor names")
    return GGUFFile(path, data, metadata, tensors)


def _tensor(
    path: Path, data: np.ndarray, name: str, dims: tuple[int, ...], kind: GGMLQuantizationType, at: int, order: str
) -> GGUFTensor:
    count = math.prod(dims)
    block, block_bytes = GGML_QUANT_SIZES[kind]
    size = count * block_bytes // block
    if at + size > len(data):
        raise ModelLoadError(
            f"{path} is truncated: tensor {name} ends at byte {at + size} but the file has {len(data)} bytes"
        )
    shape = tuple(reversed(dims))
    element = _ELEMENT_DTYPES.get(kind)
    if element is None:
        view = data[at : at + size].reshape(quant_shape_to_byte_shape(shape, kind))
    else:
        view = data[at : at + size].view(np.dtype(order + element)).reshape(shape)
    return GGUFTensor(name, kind, dims, count, size, at, view)


def open_gguf(path: Path) -> GGUFFile:
    """The parsed GGUF file at `path`; ModelLoadError naming it when it is missing, truncated or corrupt."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        return read_gguf(path)
    except ModelLoadError:
        raise
    except Exception as exc:
        # _Corrupt, an empty file (mmap refuses it), invalid UTF-8, an unknown tensor type, an OS error ...
        raise ModelLoadError(f"{path} is not a readable GGUF file (truncated or corrupt?): {exc}") from exc


def read_metadata(reader: GGUFFile) -> dict[str, Any]:
    """Every key/value pair as plain Python values (strings decoded, arrays as lists)."""
    return dict(reader.metadata)


class _Meta:
    """The `{arch}.*` keys of one file, with the file and family every error names."""

    def __init__(self, path: Path, meta: dict[str, Any], arch: str) -> None:
        self.path, self.meta, self.arch, self.family = path, meta, arch, ARCHITECTURES[arch]

    def fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path}: {what} ({self.family})")

    def get(self, key: str, default: Any = None) -> Any:
        value = self.meta.get(f"{self.arch}.{key}")
        return default if value is None else value

    def need(self, key: str) -> Any:
        value = self.meta.get(f"{self.arch}.{key}")
        if value is None:
            raise ModelLoadError(f"{self.path}: GGUF metadata key {self.arch}.{key} is missing")
        return value


def config_from_metadata(path: Path, meta: dict[str, Any], reader: GGUFFile) -> ModelConfig:
    """ModelConfig from `general.architecture` and the `{arch}.*` keys; ModelLoadError naming any key
    that is missing, unknown, or asks for maths this engine does not implement."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: general.architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    if int(meta.get("split.count") or 1) > 1:
        raise ModelLoadError(f"{path}: split.count {meta['split.count']} (a split GGUF) is not supported")
    m = _Meta(path, meta, arch)
    tensors = {t.name: t for t in reader.tensors}
    m.family = _family(m)
    for key in sorted(k for k in meta if k.startswith(f"{arch}.")):
        short = key[len(arch) + 1 :]
        if short not in HANDLED_KEYS or m.family not in FAMILY_KEYS.get(short, (m.family,)):
            raise m.fail(f"GGUF metadata key {key} is not supported")
    fam = FAMILIES[m.family]
    hidden, heads = int(m.need("embedding_length")), int(m.need("attention.head_count"))
    layers = int(m.need("block_count"))
    head_dim = int(m.get("attention.key_length", hidden // heads))
    if int(m.get("attention.value_length", head_dim)) != head_dim:
        raise m.fail(f"{arch}.attention.value_length {m.get('attention.value_length')} != key_length {head_dim}")
    rotary = int(m.get("rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise m.fail(f"{arch}.rope.dimension_count {rotary} (partial rotary of {head_dim} dims) is not supported")
    heads_kv = m.need("attention.head_count_kv") if f"{arch}.attention.head_count_kv" in meta else heads
    if isinstance(heads_kv, list):
        raise m.fail(f"{arch}.attention.head_count_kv per layer is not supported")
    embed = tensors.get("token_embd.weight")
    vocab = int(embed.shape[-1]) if embed is not None else len(meta.get("tokenizer.ggml.tokens", []))
    context = int(m.need("context_length"))
    attention = _layer_attention(m, layers, head_dim, context, tensors)
    gemma = m.family == "gemma3"
    # Biases are in the file when the model has them (llama's attention_bias/mlp_bias, qwen2's q/k/v);
    # a family that always has them and a file without them fails as missing tensors.
    qkv_bias = fam.qkv_bias or "blk.0.attn_q.bias" in tensors
    softcap = m.get("final_logit_softcapping")
    return ModelConfig(
        name=path.stem,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(heads_kv),
        head_dim=head_dim,
        intermediate_size=int(m.need("feed_forward_length")),
        vocab_size=vocab,
        rope_theta=attention[-1].rope_theta if gemma else float(m.get("rope.freq_base", 10000.0)),
        rms_eps=float(m.need("attention.layer_norm_rms_epsilon")),
        context_length=context,
        tie_embeddings="output.weight" not in tensors,
        family=m.family,
        norm=fam.norm,
        activation=fam.activation,
        qkv_bias=qkv_bias,
        o_bias="blk.0.attn_output.bias" in tensors,
        mlp_bias="blk.0.ffn_gate.bias" in tensors,
        qk_norm=fam.qk_norm,
        sandwich_norms=fam.sandwich_norms,
        embed_scale=math.sqrt(hidden) if fam.scale_embeddings else None,
        # llama.cpp's rule, the only one a GGUF carries: scores scale by head_dim ** -0.5, except
        # Gemma 3 27B (62 layers) whose query_pre_attn_scalar is hidden / heads.
        query_pre_attn_scalar=(hidden / heads if layers == 62 else float(head_dim)) if gemma else None,
        final_softcap=float(softcap) if softcap else None,
        layers=() if all(a == LayerAttention(attention[0].rope_theta) for a in attention) else tuple(attention),
    )


def _family(m: _Meta) -> str:
    """llama.cpp writes Mistral as `llama`; a sliding window (or the name) tells them apart."""
    if m.arch != "llama":
        return m.family
    named = "mistral" in str(m.meta.get("general.name", "")).lower()
    return "mistral" if named or m.get("attention.sliding_window") else "llama"


def _layer_attention(
    m: _Meta, num_layers: int, head_dim: int, context: int, tensors: dict[str, GGUFTensor]
) -> list[LayerAttention]:
    """Each layer's RoPE and window from the rope.* and sliding_window keys (and rope_freqs)."""
    theta = float(m.get("rope.freq_base", 1e6 if m.family == "gemma3" else 10000.0))
    scaling = _rope_scaling(m, head_dim, theta, context, tensors)
    window = m.get("attention.sliding_window")
    if window is not None and not (isinstance(window, int) and window > 0):
        raise m.fail(f"{m.arch}.attention.sliding_window {window!r} is not a positive integer")
    if m.family != "gemma3":
        return [LayerAttention(theta, scaling, window)] * num_layers
    if window is None:
        raise ModelLoadError(f"{m.path}: GGUF metadata key {m.arch}.attention.sliding_window is missing")
    pattern = m.get("attention.sliding_window_pattern", GEMMA3_SWA_PATTERN)
    if isinstance(pattern, list):  # one flag per layer, true = sliding
        if len(pattern) != num_layers:
            raise m.fail(f"{m.arch}.attention.sliding_window_pattern has {len(pattern)} entries, not {num_layers}")
        sliding = [bool(p) for p in pattern]
    elif isinstance(pattern, int) and pattern > 0:
        sliding = [(i + 1) % pattern != 0 for i in range(num_layers)]
    else:
        raise m.fail(f"{m.arch}.attention.sliding_window_pattern {pattern!r} is not supported")
    # The rope.scaling keys describe the global layers; the local ones are plain RoPE at their own base.
    local = LayerAttention(float(m.get("rope.freq_base_swa", GEMMA3_SWA_THETA)), None, window)
    return [local if s else LayerAttention(theta, scaling, None) for s in sliding]


def _rope_scaling(
    m: _Meta, head_dim: int, theta: float, context: int, tensors: dict[str, GGUFTensor]
) -> RopeScaling | None:
    kind = m.get("rope.scaling.type", "none")
    freqs = tensors.get(ROPE_FREQS)
    if freqs is not None:
        if kind != "none" or m.family not in ("llama", "mistral"):
            raise m.fail(f"tensor {ROPE_FREQS} with rope.scaling.type {kind!r} is not supported")
        return _llama3_from_factors(m, head_dim, theta, freqs)
    if kind == "none":
        return None
    if kind not in ("linear", "yarn"):
        raise m.fail(f"{m.arch}.rope.scaling.type {kind!r} is not supported")
    factor = float(m.need("rope.scaling.factor"))
    if kind == "linear":
        return RopeScaling("linear", factor)
    return RopeScaling(
        "yarn",
        factor,
        original_context=int(m.get("rope.scaling.original_context_length", context)),
        beta_fast=float(m.get("rope.scaling.yarn_beta_fast", 32.0)),
        beta_slow=float(m.get("rope.scaling.yarn_beta_slow", 1.0)),
    )


def _llama3_from_factors(m: _Meta, head_dim: int, theta: float, tensor: GGUFTensor) -> RopeScaling:
    """The `llama3` RopeScaling whose frequencies are llama.cpp's ``base / rope_freqs``.

    The factors are 1 for short wavelengths, `factor` for long ones and smooth in between; the
    smooth band fixes ``original_context`` given Llama 3's low/high frequency factors (1 and 4), and
    with no dimension in the band any context between the two classes gives the same frequencies.
    The result is checked against the tensor; anything else is refused.
    """
    f = torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float64))
    base, _ = inverse_frequencies(head_dim, theta, None)
    if f.shape != base.shape or bool((f < 1 - 1e-6).any()):
        raise m.fail(f"tensor {ROPE_FREQS} of shape {list(f.shape)} is not Llama 3 RoPE scaling")
    factor, low, high = float(f.max()), 1.0, 4.0
    wavelen = (2 * math.pi / base.double()).tolist()
    kept = [w for w, x in zip(wavelen, f.tolist(), strict=True) if abs(x - 1) < 1e-6]
    slowed = [w for w, x in zip(wavelen, f.tolist(), strict=True) if abs(x - factor) < 1e-6 * factor]
    band = [(w, x) for w, x in zip(wavelen, f.tolist(), strict=True) if w not in kept and w not in slowed]
    if band:  # 1/f = (1 - s) / factor + s with s = (original / wavelen - low) / (high - low)
        w, x = band[0]
        s = (1 / x - 1 / factor) / (1 - 1 / factor)
        original = (s * (high - low) + low) * w
    else:  # every kept wavelength below original / high, every slowed one above original / low
        lo, hi = high * max(kept, default=0.0), low * min(slowed, default=math.inf)
        original = (lo + hi) / 2 if math.isfinite(hi) else lo + 1
    scaling = RopeScaling("llama3", factor, round(original), low, high)
    got, _ = inverse_frequencies(head_dim, theta, scaling)
    if factor == 1.0 or not torch.allclose(got.double(), base.double() / f, rtol=1e-5, atol=0):
        raise m.fail(f"tensor {ROPE_FREQS} is not Llama 3 RoPE scaling with low/high frequency factors 1 and 4")
    return scaling


def tensor_sources(path: Path, reader: GGUFFile, config: ModelConfig) -> dict[str, GGUFTensor]:
    """Canonical weight name → the GGUF tensor holding it; ModelLoadError naming any missing or unused one."""
    names = {"embed": "token_embd.weight", "final_norm": "output_norm.weight"}
    if not config.tie_embeddings:
        names["lm_head"] = "output.weight"
    for i in range(config.num_layers):
        for canon in layer_shapes(config):
            names[f"layers.{i}.{canon}"] = f"blk.{i}.{LAYER_TENSORS[canon]}"
    by_name = {t.name: t for t in reader.tensors}
    missing = [name for name in names.values() if name not in by_name]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ModelLoadError(f"{path}: missing tensors {shown}")
    # A tensor nothing reads would be part of the maths the engine skips: refuse it by name.
    unused = sorted(set(by_name) - set(names.values()) - {ROPE_FREQS})
    if unused:
        shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
        raise ModelLoadError(f"{path}: tensors {shown} are not supported ({config.family})")
    return {canon: by_name[name] for canon, name in names.items()}


def dequantize_weights(
    path: Path, reader: GGUFFile, config: ModelConfig, sources: dict[str, GGUFTensor]
) -> dict[str, torch.Tensor]:
    """Dequantize the model's tensors one at a time into fp32 torch tensors in HF's convention."""
    permuted = config.family in ("llama", "mistral")
    gemma_norms = config.norm == "gemma"
    weights: dict[str, torch.Tensor] = {}
    for canon, tensor in sources.items():
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot dequantize tensor {tensor.name}: {exc}") from exc
        # F32 tensors come back as read-only views of the memmap: copy those so weights are owned
        # and writable; quantized ones are already fresh arrays, and a second copy would cost time.
        if np.may_share_memory(array, reader.data) or array.dtype != np.float32:
            array = np.array(array, dtype=np.float32, copy=True)
        weight = torch.from_numpy(np.ascontiguousarray(array))
        del array
        if permuted and canon.endswith((".wq", ".wk", ".bq", ".bk")):
            heads = config.num_heads if canon.endswith((".wq", ".bq")) else config.num_kv_heads
            weight = unpermute_rope_rows(weight, heads)
        if gemma_norms and tensor.name.endswith("norm.weight"):
            weight -= 1.0  # llama.cpp stored 1 + w
        weights[canon] = weight
    return weights


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: interleaved-pair order → HF rotate_half order (weights or biases)."""
    # GGUF stores each head's rows as (pair index, member) where HF stores (half, index).
    out = weight.shape[0]
    rest = tuple(weight.shape[1:])
    return weight.reshape(n_heads, out // n_heads // 2, 2, *rest).transpose(1, 2).reshape(out, *rest).contiguous()
