"""Export a model halo loads (the default GGUF, any .gguf or HF directory) as a complete Hugging Face
Llama directory that other servers read, chiefly vLLM for the optional `vllm-per-call` baseline.

`save_hf_checkpoint` writes what halo's own loader needs (config.json, fp32 model.safetensors,
tokenizer.json, a minimal tokenizer_config.json). A server built on `transformers` also needs
generation_config.json (the stop ids halo stops on), a context length and the decoding flags that
make `transformers` decode exactly like `tokenizers`; this module adds those. The weights stay in HF
rotate_half q/k order: the GGUF loader has already undone llama.cpp's row permutation.

Exports are cached: a directory carries `halo_export.json` naming its source file, size and mtime, and
is rewritten only when that changes. A directory is written beside the target and renamed into place,
so a killed export never leaves a half directory that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from halo.engine.checkpoint import Checkpoint, load_checkpoint
from halo.engine.hf_checkpoint import save_hf_checkpoint
from halo.engine.model_source import DEFAULT_MODEL, default_cache_dir, resolve_model_path
from halo.errors import ModelLoadError

EXPORT_FORMAT = 1  # bump when the written files change, so cached exports are rewritten
MARKER = "halo_export.json"


def default_export_dir(model: str | os.PathLike[str] | None = None) -> Path:
    """Where `export_hf` puts a model's export unless told otherwise: <cache>/hf-export/<name>."""
    name = Path(os.fspath(model)).stem if model is not None else DEFAULT_MODEL
    return default_cache_dir() / "hf-export" / name


def export_hf(
    out_dir: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Write `model` (None = the default model) as an HF Llama directory at `out_dir` and return it.

    An up-to-date export of the same source is kept as it is unless `force`. Refuses to replace a
    directory that is not empty and was not written by this function.
    """
    out = Path(out_dir).expanduser() if out_dir is not None else default_export_dir(model)
    source = resolve_model_path(model, cache_dir)
    stamp = _stamp(source)
    if not force and _read_marker(out) == stamp:
        return out
    if out.exists() and not (out.is_dir() and (_read_marker(out) is not None or not any(out.iterdir()))):
        raise ModelLoadError(f"{out} exists and is not a halo export; choose an empty or new directory")
    ckpt = load_checkpoint(model, cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_hf_directory(ckpt, staging)
        (staging / MARKER).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        for file in staging.iterdir():
            file.chmod(0o644)  # safetensors writes owner-only files; the cache may be shared with a server user
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def write_hf_directory(ckpt: Checkpoint, directory: Path) -> None:
    """`save_hf_checkpoint` plus what `transformers`-based servers read beyond halo's own loader."""
    save_hf_checkpoint(ckpt, directory)
    tok = ckpt.tokenizer
    tok_config_path = directory / "tokenizer_config.json"
    tok_config: dict[str, Any] = json.loads(tok_config_path.read_text(encoding="utf-8"))
    tok_config |= {
        # transformers would otherwise assume a tiny default and truncate or warn on long prompts.
        "model_max_length": ckpt.config.context_length,
        # Older transformers default to True, which rewrites " ." to "." on decode; tokenizers never does.
        "clean_up_tokenization_spaces": False,
        "add_eos_token": False,
    }
    tok_config_path.write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    generation: dict[str, Any] = {
        # Every id halo stops on (eos and the template's end-of-turn markers), so a server stops there too.
        "eos_token_id": sorted(tok.stop_ids),
        "do_sample": False,
    }
    if tok.bos_id is not None:
        generation["bos_token_id"] = tok.bos_id
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")


def _stamp(source: Path) -> dict[str, Any]:
    """What identifies an export: the exporter's format and the source's path, size and mtime."""
    if source.is_dir():  # an HF directory: its newest file stands for the whole
        files = [p for p in source.iterdir() if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        mtime = max((p.stat().st_mtime_ns for p in files), default=0)
    else:
        st = source.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    return {"format": EXPORT_FORMAT, "source": str(source.resolve()), "size": size, "mtime_ns": mtime}


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
