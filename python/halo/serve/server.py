"""`halo serve`: load workflows, compile them, load the chat engine, and run uvicorn until a signal.

The chat engine is a compiled workflow's own engine when the chat model is one a workflow runs (one
worker, in-process): one copy of the weights and KV pool, stepped by one thread. A workflow that cannot
be loaded (its YAML does not validate, its database or model is missing) is logged and skipped, and
listed with its reason under `skipped` in `GET /v1/workflows`: one broken file does not keep the others
from being served. SIGTERM (or a first Ctrl-C) drains while the server keeps listening: new work gets
503 with `Retry-After`, reads still answer, `shutdown_timeout_s` for what is in flight, the rest
cancelled (or journaled, with `ServeConfig.journal_dir`, `--journal-dir`); only then does uvicorn stop
listening and the process exit with status 0. A second Ctrl-C stops listening at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from halo.errors import HaloError
from halo.serve.config import ServeConfig

log = logging.getLogger("halo.serve")
WORKFLOW_SUFFIXES = (".yaml", ".yml")


def load_workflows(paths: Iterable[str | os.PathLike[str]], skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """Workflows by name from YAML files and folders of them; raises HaloError on a duplicate name or a
    path that does not exist. A file that does not validate raises too, unless `skipped` is given: then
    it is logged and recorded there (file name -> reason) and the others load."""
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
        try:
            workflow = Workflow.from_yaml(file)
        except HaloError as exc:
            if skipped is None:
                raise
            log.error("skipping workflow file %s: %s", file, exc)
            skipped[file.name] = str(exc)
            continue
        name = workflow.spec.name
        if name in workflows:
            raise HaloError(f"two workflows are named '{name}': {origin[name]} and {file}")
        workflows[name] = workflow
        origin[name] = file
    return workflows


def compile_workflows(
    workflows: dict[str, Any], dtype: str, skipped: dict[str, str], weights: str = "auto"
) -> dict[str, Any]:
    """Compiled apps by name; one that fails to compile (a missing database or model, a tool that does not
    bind) is logged and recorded in `skipped` (name -> reason) instead."""
    from halo.runtime.compiled import compile as compile_workflow

    apps: dict[str, Any] = {}
    for name, workflow in workflows.items():
        log.info("compiling workflow %s", name)
        try:
            # No persistent result cache online: whether a server's epochs should answer from earlier
            # runs (stale answers against live sources) is a decision of its own (docs/result_cache.md).
            apps[name] = compile_workflow(workflow, dtype=dtype, engine_options={"weights": weights}, cache=False)
        except (HaloError, OSError) as exc:
            log.error("skipping workflow %s: %s", name, exc)
            skipped[name] = str(exc)
    return apps


def serve(
    workflow_paths: Iterable[str | os.PathLike[str]],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    dtype: str = "auto",
    weights: str = "auto",
    model: str | None = None,
    chat: bool = True,
    shutdown_timeout_s: float = 60.0,
) -> None:
    """Compile every workflow, load the chat engine of `model` (default: the embedded SmolLM2), serve.
    `dtype` and `weights` apply to every engine, the workflows' and the chat engine alike."""
    import uvicorn

    from halo.runtime.chat_engine import DEFAULT_MODEL, LLMEngine
    from halo.serve.app import create_app

    skipped: dict[str, str] = {}
    workflows = load_workflows(workflow_paths, skipped)
    config = config or ServeConfig()
    apps: dict[str, Any] = {}
    engine = None
    try:
        apps = compile_workflows(workflows, dtype, skipped, weights)
        if skipped and not apps and not chat:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
            raise HaloError(f"nothing to serve: no workflow could be loaded ({reasons})")
        if chat:
            engine = shared_engine(apps, model or DEFAULT_MODEL)
            if engine is None:
                engine = LLMEngine(model=model, dtype=dtype, weights=weights)
            else:
                log.info("chat completions share the workflows' engine of %s", model or DEFAULT_MODEL)
        app = create_app(
            apps,
            engine,
            config,
            model_name=model or DEFAULT_MODEL,
            shutdown_timeout_s=shutdown_timeout_s,
            skipped=skipped,
        )
        if skipped:
            log.warning("serving %d workflows; skipped %d: %s", len(apps), len(skipped), ", ".join(sorted(skipped)))
        # uvicorn stops listening once the drain is over; connections still open end soon after (every run
        # and chat has ended by then), so its own grace only covers responses being written.
        settings = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10.0)
        state = app.state.halo
        GracefulServer(settings, state.begin_shutdown, state.drained).run()
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
    """uvicorn's server that keeps listening while the app drains (see the module doc), then stops, and
    ends the process with status 0 on SIGTERM (plain uvicorn stops listening at the signal, and re-raises
    it after a graceful shutdown, so the exit status would say -15)."""

    def __init__(self, settings: Any, begin_shutdown: Any, drained: threading.Event) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            draining = False

            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                if self.draining and sig == signal.SIGINT:
                    super().handle_exit(sig, frame)  # a second Ctrl-C: stop listening now (a third forces)
                    return
                self.draining = True
                begin_shutdown()  # the grace period starts now; `drained` ends it, then uvicorn stops

        self.server = _Server(settings)
        self.drained = drained

    def run(self) -> None:
        def exit_when_drained() -> None:
            self.drained.wait()
            self.server.should_exit = True

        threading.Thread(target=exit_when_drained, name="halo-exit-when-drained", daemon=True).start()
        self.server.run()
