"""`halo serve`: load workflows, compile them, load the chat engine, and run uvicorn until a signal.

The chat engine is a compiled workflow's own engine when the chat model is one a workflow runs (one
worker, in-process): one copy of the weights and KV pool, stepped by one thread. SIGTERM (or Ctrl-C)
drains: no new work, `shutdown_timeout_s` for what is in flight, the rest cancelled (or journaled,
with `ServeConfig.journal_dir`, `--journal-dir`), then the process exits with status 0.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from halo.errors import HaloError
from halo.serve.config import ServeConfig

log = logging.getLogger("halo.serve")
WORKFLOW_SUFFIXES = (".yaml", ".yml")


def load_workflows(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Any]:
    """Workflows by name from YAML files and folders of them; raises HaloError on a duplicate name."""
    from halo.spec import Workflow

    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files += sorted(p for p in entry.iterdir() if p.suffix in WORKFLOW_SUFFIXES)
        elif entry.exists():
            files.append(entry)
        else:
            raise HaloError(f"--workflows: {entry} does not exist")
    workflows: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for file in files:
        workflow = Workflow.from_yaml(file)
        name = workflow.spec.name
        if name in workflows:
            raise HaloError(f"two workflows are named '{name}': {origin[name]} and {file}")
        workflows[name] = workflow
        origin[name] = file
    return workflows


def serve(
    workflow_paths: Iterable[str | os.PathLike[str]],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    dtype: str = "auto",
    model: str | None = None,
    chat: bool = True,
    shutdown_timeout_s: float = 60.0,
) -> None:
    """Compile every workflow, load the chat engine of `model` (default: the embedded SmolLM2), serve."""
    import uvicorn

    import halo
    from halo.engine import LLMEngine
    from halo.engine.model_source import DEFAULT_MODEL
    from halo.serve.app import create_app

    workflows = load_workflows(workflow_paths)
    config = config or ServeConfig()
    apps: dict[str, Any] = {}
    engine = None
    try:
        for name, workflow in workflows.items():
            log.info("compiling workflow %s", name)
            apps[name] = halo.compile(workflow, dtype=dtype)
        if chat:
            engine = shared_engine(apps, model or DEFAULT_MODEL)
            if engine is None:
                engine = LLMEngine(model=model, dtype=dtype)
            else:
                log.info("chat completions share the workflows' engine of %s", model or DEFAULT_MODEL)
        app = create_app(apps, engine, config, model_name=model or DEFAULT_MODEL, shutdown_timeout_s=shutdown_timeout_s)
        # uvicorn waits for open connections first: they end once runs end (finished or cancelled).
        settings = uvicorn.Config(
            app, host=host, port=port, log_level="info", timeout_graceful_shutdown=shutdown_timeout_s + 10.0
        )
        GracefulServer(settings, app.state.halo.begin_shutdown).run()
    finally:
        for compiled in apps.values():
            compiled.close()


def shared_engine(apps: dict[str, Any], model: str) -> Any:
    """The engine a compiled app (one in-process worker) already holds for `model`, or None."""
    for compiled in apps.values():
        if compiled.num_workers == 1 and model in compiled.model_sources:
            return compiled.engine(model)
    return None


class GracefulServer:
    """uvicorn's server whose SIGTERM starts the app's drain at once and ends the process with status 0
    (plain uvicorn re-raises the signal after a graceful shutdown, so the exit status would say -15)."""

    def __init__(self, settings: Any, begin_shutdown: Any) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                begin_shutdown()  # the grace period starts now, not after uvicorn closed its connections
                if sig == signal.SIGTERM:
                    self.should_exit = True  # not recorded as captured: nothing re-raises it afterwards
                    return
                super().handle_exit(sig, frame)

        self.server = _Server(settings)

    def run(self) -> None:
        self.server.run()
