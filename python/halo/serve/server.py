"""`halo serve`: load workflows, compile them, load the chat engine, and run uvicorn until a signal."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
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
    apps: dict[str, Any] = {}
    engine = None
    try:
        for name, workflow in workflows.items():
            log.info("compiling workflow %s", name)
            apps[name] = halo.compile(workflow, dtype=dtype)
        if chat:
            engine = LLMEngine(model=model, dtype=dtype)
        app = create_app(apps, engine, config, model_name=model or DEFAULT_MODEL, shutdown_timeout_s=shutdown_timeout_s)
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=shutdown_timeout_s)
    finally:
        for compiled in apps.values():
            compiled.close()
