"""An app's LLM workers: started with their models loaded, asked what they hold and cache, closed.

One worker runs in this process (`LocalWorker`, all of the workflow's models loaded at start); more
than one run as Ray actors on their share of the cores (`RayWorker`, each with the first model
loaded, the others on demand). `models_loaded_at_start` says which, so `halo explain` can plan for
the workers a fresh `halo run` starts without starting them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from halo.engine import EngineStats, LLMEngine
from halo.engine.checkpoint import load_tokenizer
from halo.errors import InvalidRequestError
from halo.runtime.llm_worker import EngineRecipe, EngineSet, LocalWorker, RayWorker
from halo.runtime.online_session import OnlineSession

WARM_PREFIX_WAIT_S = 2.0  # how long planning waits for the session thread to read the prefix cache


def models_loaded_at_start(model_sources: Sequence[str], workers: int) -> list[str]:
    """The models each worker holds once started, in load order (the last is the most recent)."""
    if workers == 1:
        return list(model_sources)
    return list(model_sources[:1])  # every Ray worker loads the first model, all at once; others on demand


class WorkerPool:
    """The workers of one app and the tokenizers of its models (`recipe` says how each engine is built)."""

    def __init__(
        self, count: int, model_sources: Sequence[str], *, recipe: EngineRecipe, ray_address: str | None
    ) -> None:
        self.model_sources = list(model_sources)
        self.tokenizers: dict[str, Any] = {}
        self.workers: list[Any] = []
        preload = models_loaded_at_start(self.model_sources, count)
        models = recipe.models
        if count == 1:
            engines = EngineSet(recipe.build, capacity=max(2, len(self.model_sources)))
            self.workers = [LocalWorker(0, engines)]
            for source in preload:
                engine = engines.get(source)
                assert engine is not None
                self.tokenizers[source] = engine.tokenizer
            return
        _start_ray(ray_address)
        threads = max(1, (os.cpu_count() or 2) // count)
        self.workers = [RayWorker(i, recipe, threads) for i in range(count)]
        for source in self.model_sources:
            self.tokenizers[source] = load_tokenizer(models.get(source, source))
        if preload:
            import ray

            ray.get([w.preload_async(model) for w in self.workers for model in preload])

    def resident(self) -> tuple[tuple[str, ...], ...]:
        """Per worker, the models it holds now, least recently used first."""
        return tuple(tuple(w.resident_models()) for w in self.workers)

    def stats(self) -> list[EngineStats]:
        return [w.stats() for w in self.workers]

    def engine(self, source: str) -> LLMEngine:
        """The loaded engine of model `source` on a one-worker pool."""
        worker = self.workers[0] if self.workers else None
        if not isinstance(worker, LocalWorker):
            raise InvalidRequestError("engine() needs a compiled app with one in-process worker")
        engine = worker.engines.get(source)
        if engine is None:
            raise InvalidRequestError(f"no engine for model {source!r} could be loaded")
        return engine

    def warm_prefix(self, model: str, prompts: list[list[int]], session: OnlineSession | None) -> list[int]:
        """Per prompt, the longest prefix an in-process engine of `model` caches now (0 where none does).

        The engines are stepped by one thread only: on an online session the question crosses to the
        session's thread (answered between two steps); otherwise this thread is the one that steps them.
        """
        engines = [e for w in self.workers if isinstance(w, LocalWorker) and (e := w.engines.engines.get(model))]
        if not engines or not prompts:
            return [0] * len(prompts)

        def ask() -> list[int]:
            per_engine = [engine.cached_prefix_lengths(prompts) for engine in engines]
            return [max(lengths) for lengths in zip(*per_engine, strict=True)]

        if session is None:
            return ask()
        answer: Future[list[int]] = Future()
        session.call_soon(lambda: answer.set_result(ask()) if not answer.done() else None)
        try:
            return answer.result(timeout=WARM_PREFIX_WAIT_S)
        except TimeoutError:  # the loop is stuck in a long step: plan as if nothing were cached
            answer.cancel()
            return [0] * len(prompts)

    def close(self) -> None:
        for worker in self.workers:
            if isinstance(worker, RayWorker):
                worker.shutdown()
        self.workers = []


def _start_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            num_cpus=None if address else os.cpu_count(),
        )
