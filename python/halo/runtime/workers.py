"""An app's LLM workers: started with their models loaded, asked what they hold and cache, closed.

One worker runs in this process (`LocalWorker`, all of the workflow's models loaded at start); more
than one run as Ray actors (`RayWorker`, each with the first model loaded, the others on demand), on
a local Ray started on demand or on an existing cluster (`RayOptions.address`). Each actor reserves
`worker_cpus` CPUs (default: this machine's cores ÷ workers; its engine runs that many threads) and,
with `worker_resources`, one custom Ray resource per worker, a node label: worker i lands on a node
started with `--resources '{"<label i>": 1}'` (each worker asks for `LABEL_SHARE` of it, so a label
names a node, it does not count workers: several workers may share one). `models_loaded_at_start`
says which models the workers hold, so `halo explain` can plan for the workers a fresh `halo run`
starts without starting them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from halo.engine import EngineStats, LLMEngine
from halo.engine.checkpoint import load_tokenizer
from halo.errors import InvalidRequestError
from halo.runtime.llm_worker import EngineRecipe, EngineSet, LocalWorker
from halo.runtime.online_session import OnlineSession
from halo.runtime.ray_worker import Placement, RayWorker

WARM_PREFIX_WAIT_S = 2.0  # how long planning waits for the session thread to read the prefix cache
LABEL_SHARE = 0.01  # of its label resource each worker asks for: up to 100 workers may share a labelled node


@dataclass(frozen=True)
class RayOptions:
    """Where Ray workers run: the cluster (None: a local Ray, started on demand), the CPUs each
    reserves (None: this machine's cores ÷ workers) and, optionally, one node label per worker."""

    address: str | None = None
    worker_cpus: float | None = None
    worker_resources: tuple[str, ...] = ()

    def check(self, workers: int) -> None:
        """Raise InvalidRequestError for options that cannot place `workers` workers."""
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise InvalidRequestError(f"ray_address must be a non-empty string like 'HOST:PORT', got {self.address!r}")
        cpus = self.worker_cpus
        if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int | float) or not cpus > 0):
            raise InvalidRequestError(f"worker_cpus must be a positive number, got {cpus!r}")
        labels = self.worker_resources
        if labels and len(labels) != workers:
            raise InvalidRequestError(
                f"worker_resources names {len(labels)} resources ({', '.join(labels)}) for {workers} workers: "
                "give one per worker"
            )
        for label in labels:
            if not isinstance(label, str) or not label.strip() or label in ("CPU", "GPU", "memory"):
                raise InvalidRequestError(f"worker_resources: {label!r} is not a custom resource name")
        if workers == 1 and (self.address is not None or cpus is not None or labels):
            raise InvalidRequestError(
                "ray_address, worker_cpus and worker_resources place Ray workers: they need workers >= 2 "
                "(one worker runs in this process)"
            )

    def placements(self, count: int, cluster: dict[str, float]) -> list[Placement]:
        """Each worker's placement, checked against the cluster's resources (`ray.cluster_resources()`)."""
        cpus = self.worker_cpus if self.worker_cpus is not None else max(1, (os.cpu_count() or 2) // count)
        where = f"the Ray cluster at {self.address}" if self.address else "the local Ray"
        if cpus * count > cluster.get("CPU", 0.0) + 1e-9:
            raise InvalidRequestError(
                f"{count} workers of {cpus:g} CPUs need {cpus * count:g} CPUs; {where} has {cluster.get('CPU', 0.0):g}"
            )
        for label in self.worker_resources:
            if label not in cluster:
                custom = sorted(k for k in cluster if k not in ("CPU", "GPU", "memory", "object_store_memory"))
                custom = [k for k in custom if not k.startswith("node:")]
                raise InvalidRequestError(
                    f"worker_resources: no node of {where} offers resource {label!r} "
                    f"(its custom resources: {', '.join(custom) or 'none'})"
                )
        labels = self.worker_resources or (None,) * count
        return [Placement(cpus, {label: LABEL_SHARE} if label else {}) for label in labels]


def models_loaded_at_start(model_sources: Sequence[str], workers: int) -> list[str]:
    """The models each worker holds once started, in load order (the last is the most recent)."""
    if workers == 1:
        return list(model_sources)
    return list(model_sources[:1])  # every Ray worker loads the first model, all at once; others on demand


class WorkerPool:
    """The workers of one app and the tokenizers of its models (`recipe` says how each engine is built)."""

    def __init__(
        self, count: int, model_sources: Sequence[str], *, recipe: EngineRecipe, ray: RayOptions | None = None
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
        options = ray or RayOptions()
        placements = options.placements(count, _start_ray(options.address))
        self.workers = [RayWorker(i, recipe, placement) for i, placement in enumerate(placements)]
        for source in self.model_sources:
            self.tokenizers[source] = load_tokenizer(models.get(source, source))
        if preload:
            import ray as ray_module

            ray_module.get([w.preload_async(model) for w in self.workers for model in preload])

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


def _start_ray(address: str | None) -> dict[str, float]:
    """Join the cluster at `address` (or start a local Ray) unless this process is connected already;
    the cluster's total resources."""
    import ray

    if not ray.is_initialized():
        if address:  # an existing cluster: its nodes say what they offer
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count())
    return dict(ray.cluster_resources())
