"""The native build configures with and without HALO_CUDA, and the CUDA build compiles and links
with a static CUDA runtime (nvcc needs no GPU, so this runs on CPU-only machines that have nvcc).

Configure-only tests take seconds. The full CUDA compile (~30 s on 2 cores) is marked slow;
deselect it with ``-m "not slow"``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")
NVCC = shutil.which("nvcc") or next(
    (p for p in ("/usr/local/cuda/bin/nvcc",) if os.access(p, os.X_OK)), None)

pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not installed")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA toolkit on PATH or in "
                                                     "/usr/local/cuda): the HALO_CUDA=ON build can't be checked")


def pybind11_dir() -> str:
    return subprocess.run([sys.executable, "-m", "pybind11", "--cmakedir"], check=True, capture_output=True,
                          text=True).stdout.strip()


def configure(build_dir: Path, *options: str) -> subprocess.CompletedProcess:
    cmd = [CMAKE, "-S", str(REPO), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
           f"-Dpybind11_DIR={pybind11_dir()}", f"-DPython_EXECUTABLE={sys.executable}", *options]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def cache(build_dir: Path) -> dict[str, str]:
    entries = {}
    for line in (build_dir / "CMakeCache.txt").read_text().splitlines():
        if "=" in line and not line.startswith(("//", "#")):
            key, value = line.split("=", 1)
            entries[key.split(":", 1)[0]] = value
    return entries


def test_configures_without_cuda(tmp_path):
    result = configure(tmp_path, "-DHALO_CUDA=OFF")
    assert result.returncode == 0, result.stdout + result.stderr
    entries = cache(tmp_path)
    assert entries["HALO_CUDA"] == "OFF"
    assert "CMAKE_CUDA_COMPILER" not in entries


@needs_nvcc
def test_configures_with_cuda(tmp_path):
    result = configure(tmp_path, "-DHALO_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={NVCC}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no CUDA compiler was found" not in result.stderr
    assert Path(cache(tmp_path)["CMAKE_CUDA_COMPILER"]).name == "nvcc"
    # Explicit architectures: "native" fails without a GPU.
    flags = (tmp_path / "CMakeFiles" / "_core.dir" / "flags.make").read_text()
    assert "HALO_WITH_CUDA" in flags
    assert "arch=compute_80" in flags and "arch=compute_90" in flags


@needs_nvcc
@pytest.mark.slow
def test_cuda_build_compiles_links_statically_and_imports_without_a_gpu(tmp_path):
    result = configure(tmp_path, "-DHALO_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={NVCC}")
    assert result.returncode == 0, result.stdout + result.stderr
    build = subprocess.run([CMAKE, "--build", str(tmp_path), "-j2"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    (module,) = tmp_path.glob("_core*.so")

    readelf = shutil.which("readelf")
    if readelf:
        needed = subprocess.run([readelf, "-d", str(module)], capture_output=True, text=True).stdout
        assert "libcudart" not in needed, needed

    # In a fresh interpreter, so this process keeps its own halo._core.
    probe = textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("_core", {str(module)!r})
        core = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(core)
        assert core.cuda_enabled()
        rb = core.RingBuffer(4, 64)
        assert rb.push(b"x") and rb.pop() == b"x"
        stats = core.ring_buffer_stress(10_000, 4, 16)
        assert stats["received"] == 10_000 and stats["lost"] == 0
        print("pinned", rb.pinned)
    """)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
