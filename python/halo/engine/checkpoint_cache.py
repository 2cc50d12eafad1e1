"""The conversion cache: a checkpoint converted once is memory-mapped from the cache dir on later loads.

Loading a GGUF dequantizes and un-permutes every tensor; loading an HF directory reads, renames and
splits safetensors shards; either way the weights are then cast to the engine's dtype. The first
load stores the result — the weights in the target dtype, the config, the tokenizer and the other
fields of the `Checkpoint` — as one safetensors file under ``<cache dir>/checkpoints``; later loads
map that file (zero copy: pages come from the page cache, shared by every process on the machine).

An entry is named and checked by a key over the source's identity (resolved path; every file's
size, mtime_ns and a hash of its first MiB), the target dtype, Halo's version, a fingerprint of the
loader code and the versions of the libraries the conversion goes through. So an edited, replaced or
touched source, another dtype or another Halo is a different key and never reads a stale entry.

An entry is trusted only when it opens as safetensors (a truncated file or a bad header fails
there), its recorded key matches, and a digest of every tensor's name, shape, dtype and first and
last 4 KiB matches the one recorded at write time; anything else is a miss and the entry is rebuilt.
The digest is sampled, not a full hash (hashing 270 MB would cost more than the load it guards): it
catches truncation, a foreign or half-written file and damage near tensor boundaries, not a single
flipped bit deep inside a tensor. Writers write a temporary file in the same folder, fsync it and
rename it over the entry, so a reader sees either a whole old entry or a whole new one, and two
processes converting at once both succeed (the last rename wins; both files are complete).

A write removes the source's entries that can never be read again: those of an earlier identity
of the source (edited, replaced, touched) and those whose source is gone. Entries of the same
source at another dtype or written by another Halo (another version or checkout sharing the cache
dir) stay while they are used: a hit marks its entry used (its mtime), and one unused for
`UNUSED_ENTRY_S` is removed. Before, any other entry of the source was removed, so two installs or
two dtypes in turn rebuilt the conversion at every start.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from halo.durable_files import sync_directory
from halo.engine.checkpoint_layout import Checkpoint
from halo.engine.grammar_vocabulary import GrammarVocabulary, grammar_vocabulary
from halo.engine.tokenizer import Tokenizer

CACHE_FORMAT = 2  # bump when the entry layout changes
HEAD_BYTES = 1 << 20  # how much of each source file the identity hashes
SAMPLE_BYTES = 4096  # per tensor end, what the digest covers
MAX_DISK_FRACTION = 0.5  # an entry is written only if it takes at most this share of the free disk
STALE_TEMP_S = 3600.0  # a temporary file older than this is a dead writer's, removed on the next write
UNUSED_ENTRY_S = 7 * 86400.0  # an entry of the source at another key, unused this long, is removed on a write

# The modules whose code decides what a conversion produces: an edit to any of them is a new key.
LOADER_MODULES = (
    "halo.engine.checkpoint",
    "halo.engine.checkpoint_cache",
    "halo.engine.checkpoint_layout",
    "halo.engine.gguf_checkpoint",
    "halo.engine.grammar_vocabulary",
    "halo.engine.hf_checkpoint",
    "halo.engine.hf_config",
    "halo.engine.model_config",
    "halo.engine.tokenizer",
)
# distributions, by their versions
LIBRARIES = ("halo", "torch", "gguf", "tokenizers", "safetensors", "numpy", "llguidance")


@dataclass(frozen=True)
class CacheEntry:
    """Where one (source, dtype) conversion lives, and the key its contents must carry."""

    path: Path
    key: str
    source: Path
    identity: str = ""  # a hash of the source's identity alone: entries sharing it are of the same files


@dataclass(frozen=True)
class CacheLoad:
    """A loaded checkpoint and how: ``hit`` (mapped from the entry), ``built`` (converted, stored) or
    ``uncached`` (converted; the entry could not be written). ``reason`` says why an entry was rebuilt."""

    checkpoint: Checkpoint
    outcome: str
    entry: CacheEntry | None
    reason: str = ""


def load_through_cache(
    source: Path, dtype: torch.dtype, cache_dir: Path, build: Callable[[Path], Checkpoint]
) -> CacheLoad:
    """``source``'s checkpoint with weights in ``dtype``: mapped from the cache, else built by ``build`` and stored."""
    try:
        entry = entry_for(source, dtype, cache_dir)
    except OSError:
        entry = None  # an unreadable source: let the loader raise its located error
    reason = "absent"
    if entry is not None and entry.path.exists():
        ckpt, reason = read_entry(entry)
        if ckpt is not None:
            _mark_used(entry.path)
            return CacheLoad(ckpt, "hit", entry)
        print(f"halo: rebuilding the checkpoint cache entry {entry.path}: {reason}", file=sys.stderr)
    ckpt = build(source)
    ckpt.weights = {name: w.to(dtype).contiguous() for name, w in ckpt.weights.items()}
    if entry is None:
        return CacheLoad(ckpt, "uncached", None, reason)
    try:
        write_entry(entry, ckpt)
    except (OSError, RuntimeError, pickle.PicklingError, TypeError) as exc:
        # The cache only saves time: a full disk or a read-only cache dir must not fail the load.
        print(f"halo: could not write the checkpoint cache entry {entry.path}: {exc}", file=sys.stderr)
        return CacheLoad(ckpt, "uncached", entry, reason)
    return CacheLoad(ckpt, "built", entry, reason)


# ---- keys ------------------------------------------------------------------------------------


def source_identity(source: Path) -> dict[str, Any]:
    """The resolved path and, for each file of it (a .gguf, or an HF directory's files), size, mtime_ns, head hash."""
    source = source.resolve()
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    described = []
    for f in files:
        st = f.stat()
        with open(f, "rb") as handle:
            head = hashlib.sha256(handle.read(HEAD_BYTES)).hexdigest()
        described.append([f.name, st.st_size, st.st_mtime_ns, head])
    return {"path": str(source), "files": described}


@cache
def code_fingerprint() -> str:
    """Halo's version, a hash of the loader modules' source and the conversion libraries' versions."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT}".encode())
    for module in LOADER_MODULES:
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
        digest.update(module.encode() + (Path(origin).read_bytes() if origin else b"?"))
    for library in LIBRARIES:
        try:
            digest.update(f"{library} {importlib.metadata.version(library)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} absent".encode())
    return digest.hexdigest()


def entry_for(source: Path, dtype: torch.dtype, cache_dir: Path) -> CacheEntry:
    """The entry of ``source`` converted to ``dtype``: its file name says what it holds, its key is checked."""
    identity = source_identity(source)
    dtype_name = str(dtype).removeprefix("torch.")
    blob = json.dumps({"source": identity, "dtype": dtype_name, "code": code_fingerprint()}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()
    name = f"{_source_tag(identity['path'])}-{dtype_name}-{key[:16]}.safetensors"
    same_files = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return CacheEntry(cache_dir / "checkpoints" / name, key, Path(identity["path"]), same_files)


def _source_tag(resolved: str) -> str:
    # The stem keeps the folder readable; the path hash keeps two models named alike apart and lets a
    # write find this source's older entries to remove.
    stem = "".join(c if c.isalnum() or c in "._" else "_" for c in Path(resolved).stem)[:48]
    return f"{stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:12]}"


# ---- reading and writing -----------------------------------------------------------------------


def read_entry(entry: CacheEntry) -> tuple[Checkpoint | None, str]:
    """The entry's checkpoint with mapped weights, or None and why it cannot be trusted."""
    try:
        with safe_open(str(entry.path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("halo.key") != entry.key:
                return None, "its key does not match (a foreign or renamed file)"
            weights = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        if tensor_digest(weights) != meta.get("halo.digest"):
            return None, "its tensors do not match the digest recorded when it was written"
        fields_state = _fields_state(meta)
        if fields_state is None:
            return None, "its config and tokenizer do not match the digest recorded when it was written"
        tokenizer = restore_tokenizer(fields_state.pop("tokenizer"))
    except Exception as exc:  # a damaged file fails in safetensors, base64, pickle or the tokenizer, any way
        return None, f"it cannot be read ({type(exc).__name__}: {exc})"
    if tokenizer is None:
        return None, "its tokenizer state does not rebuild the same tokenizer"
    return Checkpoint(weights=weights, tokenizer=tokenizer, **fields_state), ""


def _fields_state(meta: dict[str, str]) -> dict[str, Any] | None:
    # the pickled fields are checked whole (a few MB of tokenizer at most) before pickle sees them
    blob = meta["halo.checkpoint"]
    if hashlib.sha256(blob.encode()).hexdigest() != meta.get("halo.checkpoint_sha256"):
        return None
    return pickle.loads(base64.b64decode(blob))


def cached_tokenizer(source: Path, cache_dir: Path) -> Tokenizer | None:
    """The tokenizer stored with any current entry of ``source`` (its header only: no tensor is read), or None."""
    for dtype in (torch.bfloat16, torch.float32):
        try:
            entry = entry_for(source, dtype, cache_dir)
            if not entry.path.exists():
                continue
            with safe_open(str(entry.path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("halo.key") != entry.key:
                continue
            state = _fields_state(meta)
            tokenizer = restore_tokenizer(state["tokenizer"]) if state is not None else None
        except Exception:  # unreadable or damaged: the caller builds the tokenizer from the source
            continue
        if tokenizer is not None:
            return tokenizer
    return None


def write_entry(entry: CacheEntry, ckpt: Checkpoint) -> None:
    """Store ``ckpt`` as ``entry`` atomically (temporary file, fsync, rename), then drop this source's older entries."""
    folder = entry.path.parent
    folder.mkdir(parents=True, exist_ok=True)
    size = sum(w.nbytes for w in ckpt.weights.values())
    free = shutil.disk_usage(folder).free
    if size > free * MAX_DISK_FRACTION:
        # an fp32 copy of a multi-billion-parameter model is tens of GB: never fill the disk for a cache
        raise OSError(f"the entry would take {size / 2**30:.1f} GiB of the {free / 2**30:.1f} GiB free")
    weights = {name: _owned(w) for name, w in ckpt.weights.items()}
    if ckpt.grammar_vocabulary is None:  # once per conversion, so every later load's grammar starts faster
        ckpt.grammar_vocabulary = _grammar_vocabulary(ckpt)
    state = {f.name: getattr(ckpt, f.name) for f in fields(Checkpoint) if f.name not in ("weights", "tokenizer")}
    state["tokenizer"] = tokenizer_state(ckpt.tokenizer)
    blob = base64.b64encode(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)).decode()
    metadata = {
        "halo.key": entry.key,
        "halo.source": str(entry.source),
        "halo.identity": entry.identity,
        "halo.digest": tensor_digest(weights),
        "halo.checkpoint": blob,
        "halo.checkpoint_sha256": hashlib.sha256(blob.encode()).hexdigest(),
    }
    fd, tmp = tempfile.mkstemp(prefix=entry.path.name + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(weights, tmp, metadata=metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache may be shared
        os.replace(tmp, entry.path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    sync_directory(folder)
    prune(folder, keep=entry.path, identity=entry.identity)


def _mark_used(path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache dir: the entry just ages
        os.utime(path)  # the mtime says when an entry was last used (see `prune`)


def _grammar_vocabulary(ckpt: Checkpoint) -> GrammarVocabulary | None:
    try:
        return grammar_vocabulary(ckpt.tokenizer, ckpt.config.vocab_size)
    except Exception:  # a tokenizer llguidance cannot read: constrained requests say so when they come
        return None


def prune(folder: Path, keep: Path, identity: str = "") -> None:
    """Remove the entries of ``keep``'s source that are stale (another identity of its files, none
    recorded, or unused for `UNUSED_ENTRY_S`), entries whose source is gone, and dead temporaries."""
    own_tag = keep.name.rsplit("-", 2)[0]
    now = time.time()
    for path in folder.iterdir():
        try:
            if path.name.endswith(".tmp"):
                if now - path.stat().st_mtime > STALE_TEMP_S:
                    path.unlink(missing_ok=True)
                continue
            if path == keep or not path.name.endswith(".safetensors"):
                continue
            if path.name.rsplit("-", 2)[0] == own_tag:
                meta = _entry_metadata(path)
                in_use = now - path.stat().st_mtime < UNUSED_ENTRY_S
                if identity and meta.get("halo.identity") == identity and in_use:
                    continue  # the same files at another dtype or by another Halo: still someone's
                path.unlink(missing_ok=True)  # a reader that mapped it keeps its pages until it unmaps
            elif not _entry_source_exists(path):
                path.unlink(missing_ok=True)
        except OSError:
            continue  # another process pruned it first


def _entry_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # unreadable: a corrupt entry nobody can use
        return {}


def _entry_source_exists(path: Path) -> bool:
    source = _entry_metadata(path).get("halo.source")
    return source is not None and Path(source).exists()


def _owned(w: torch.Tensor) -> torch.Tensor:
    # safetensors refuses tensors that share storage (views of a fused tensor): give those their own.
    w = w.contiguous()
    return w if w.untyped_storage().nbytes() == w.nbytes and w.storage_offset() == 0 else w.clone()


def tensor_digest(weights: dict[str, torch.Tensor]) -> str:
    """A hash of every tensor's name, dtype, shape and first and last SAMPLE_BYTES bytes."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        w = weights[name]
        digest.update(f"{name}|{w.dtype}|{tuple(w.shape)}|".encode())
        flat = w.reshape(-1).view(torch.uint8) if w.numel() else torch.empty(0, dtype=torch.uint8)
        digest.update(flat[:SAMPLE_BYTES].numpy().tobytes())
        digest.update(flat[-SAMPLE_BYTES:].numpy().tobytes())
    return digest.hexdigest()


# ---- the tokenizer -----------------------------------------------------------------------------


def tokenizer_state(tokenizer: Tokenizer) -> dict[str, Any]:
    """The tokenizer's attributes without its compiled chat template (generated code pickle cannot name)."""
    return {k: v for k, v in vars(tokenizer).items() if not isinstance(v, jinja2.Template)}


def restore_tokenizer(state: dict[str, Any]) -> Tokenizer | None:
    """Rebuild through the constructor (which compiles the template) from the saved attributes of the same
    names, then check every attribute the constructor set equals the saved one; None when not (a
    constructor argument the state does not carry), so the entry is rebuilt rather than trusted."""
    params = [p for p in inspect.signature(Tokenizer.__init__).parameters.values() if p.name != "self"]
    args: dict[str, Any] = {}
    for p in params:
        if p.name in state:
            args[p.name] = state[p.name]
        elif p.default is inspect.Parameter.empty:
            return None
    tokenizer = Tokenizer(**args)
    rebuilt = tokenizer_state(tokenizer)
    same = rebuilt.keys() == state.keys() and all(rebuilt[k] is state[k] or _equal(rebuilt[k], state[k]) for k in state)
    return tokenizer if same else None


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # values without a usable ==
        return False
