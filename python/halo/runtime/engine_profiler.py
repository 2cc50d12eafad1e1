"""Profile a real LLMEngine over a small grid of step shapes and fit its LatencyCurves (`halo profile`).

It lives in runtime because it drives a live engine; the curves it fits are `halo.plan.cost`'s.
Every sample is the best of a few timings of one ``engine.step()`` (the minimum is the least
disturbed by other work on a shared machine). It steps the engine itself, not through the run
loop, because what it measures is one step at a shape it sets up; a loop would add its own time.
Prompts are random ordinary tokens, fresh for every
timing so nothing is served from the prefix cache unless a sample asks for a cached prefix.
The KV copy bandwidth is the best of a few export + import round trips of one cached prefix; the
model load time is measured by whoever built the engine (``halo profile`` times the constructor).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from typing import Any

from halo.engine.sampling_params import SamplingParams
from halo.plan.cost.latency_curves import DecodeSample, LatencyCurves, PrefillSample, fit_latency_curves
from halo.plan.cost.profile_cache import quantized

_FIRST_ORDINARY_TOKEN = 17  # SmolLM2's ids 0..16 are control tokens


@dataclass(frozen=True)
class ProfileGrid:
    """The step shapes to measure. The default runs in about 25 s on 2 AVX-512 cores."""

    prefill_new: tuple[int, ...] = (32, 64, 128, 256, 512)
    prefill_cached: tuple[int, ...] = (0, 256)  # cached prefix lengths (multiples of the block size)
    prefill_batched: tuple[tuple[int, int], ...] = ((4, 64), (4, 192), (8, 96))  # (batch, new) in one step
    decode_batch: tuple[int, ...] = (1, 8, 32, 64)
    decode_context: tuple[int, ...] = (128, 448)
    repeats: int = 3  # timings per shape; the fastest counts
    kv_copy_tokens: int = 512  # prefix length of the KV copy round trips (a multiple of the block size)


class EngineTimer:
    """Times single engine steps of a chosen shape on an idle ``LLMEngine`` (nothing else queued)."""

    def __init__(self, engine: Any, seed: int = 0) -> None:
        if engine.has_unfinished():
            raise ValueError("profile an idle engine: it still has unfinished requests")
        self.engine = engine
        self.rng = random.Random(seed)
        self.block_size = engine.block_manager.block_size

    def tokens(self, n: int) -> list[int]:
        vocab = self.engine.config.vocab_size
        return [self.rng.randrange(_FIRST_ORDINARY_TOKEN, vocab) for _ in range(n)]

    def cached_head(self, n: int) -> list[int]:
        """A fresh n-token prompt run once, so its whole blocks sit in the prefix cache."""
        head = self.tokens(n)
        if n:
            self._run(head, max_tokens=1)
        return head

    def prefill(self, new: int, cached: int = 0, batch: int = 1, repeats: int = 3) -> PrefillSample:
        """Fastest of ``repeats`` single steps prefilling ``batch`` prompts of ``new`` tokens after a cached head."""
        assert cached % self.block_size == 0, "a cached prefix is matched in whole blocks"
        assert batch * new <= self.engine.batch_scheduler.max_batch_tokens, "the prefill must fit in one step"
        best = float("inf")
        for _ in range(repeats):
            head = self.cached_head(cached)
            params = self._params(max_tokens=1)
            for _ in range(batch):
                self.engine.add_request(head + self.tokens(new), params)
            t0 = time.perf_counter()
            self.engine.step()
            best = min(best, time.perf_counter() - t0)
            self._drain()
        return PrefillSample(new, cached, batch, best)

    def decode(self, batch: int, context: int, repeats: int = 3) -> DecodeSample:
        """Fastest of ``repeats`` decode steps of ``batch`` sequences holding about ``context`` tokens each."""
        samples = self.decode_sweep((batch,), context, repeats)
        if not samples:
            raise ValueError(f"{batch} sequences of {context} tokens do not fit the engine's KV pool")
        return samples[0]

    def decode_sweep(self, batches: tuple[int, ...], context: int, repeats: int = 3) -> list[DecodeSample]:
        """Decode samples at each batch size (largest first) over one set of distinct ``context``-token prompts.

        Contexts are distinct, not a shared cached head: decode attention reads every sequence's own
        KV blocks, and shared blocks staying hot in cache read ~30% faster than real contexts. The
        prompts are prefilled once for the largest batch, which is then aborted down to each smaller one.
        """
        self.engine.reset_prefix_cache()  # its blocks count as used; the timer's prompts are never reused
        bm = self.engine.block_manager
        headroom = 8 * (repeats + 1) * len(batches) + 64
        fits = bm.num_free // bm.blocks_for(context + headroom)
        batches = sorted((b for b in batches if b <= fits), reverse=True)
        if not batches:
            return []
        ids = [
            self.engine.add_request(self.tokens(context), self._params(max_tokens=headroom)) for _ in range(batches[0])
        ]
        running = self.engine.batch_scheduler.running
        for _ in range(batches[0] * context // self.engine.batch_scheduler.max_batch_tokens + 4):
            if len(running) == batches[0] and all(s.num_uncomputed == 1 for s in running):
                break
            self.engine.step()
        else:
            raise RuntimeError(f"could not set up a decode batch of {batches[0]} at context {context}")
        samples = []
        for batch in batches:
            for rid in ids[batch:]:
                self.engine.abort(rid)
            ids = ids[:batch]
            self.engine.step()  # warm-up at this shape
            best, best_context = float("inf"), float(context)
            for _ in range(repeats):
                ctx = sum(s.num_computed for s in running) / batch
                t0 = time.perf_counter()
                self.engine.step()
                elapsed = time.perf_counter() - t0
                if elapsed < best:
                    best, best_context = elapsed, ctx
            samples.append(DecodeSample(batch, best_context, best))
        for rid in ids:
            self.engine.abort(rid)
        return samples

    def kv_copy(self, tokens: int, repeats: int = 3) -> tuple[float, float]:
        """(bytes per token, bytes per second) of exporting a cached ``tokens``-token prefix and importing
        it back after the prefix cache was cleared: what moving KV to another worker costs."""
        tokens -= tokens % self.block_size
        best, per_token, rate = float("inf"), 0.0, 0.0
        for _ in range(repeats):
            head = self.cached_head(tokens)
            t0 = time.perf_counter()
            prefix = self.engine.export_prefix(head)
            t1 = time.perf_counter()
            if prefix is None:
                raise RuntimeError("the engine cached nothing of the profiled prefix")
            self.engine.reset_prefix_cache()  # so the import copies every block back in
            t2 = time.perf_counter()
            self.engine.import_prefix(prefix)
            elapsed = (t1 - t0) + (time.perf_counter() - t2)
            self.engine.reset_prefix_cache()
            if elapsed < best:
                best, per_token, rate = elapsed, prefix.nbytes / prefix.num_tokens, prefix.nbytes / elapsed
        return per_token, rate

    def _params(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, ignore_eos=True)

    def _run(self, prompt: list[int], max_tokens: int) -> None:
        self.engine.add_request(prompt, self._params(max_tokens))
        self._drain()

    def _drain(self) -> None:
        while self.engine.has_unfinished():
            self.engine.step()


def profile_engine(
    engine: Any, model: str | None = None, grid: ProfileGrid | None = None, load_s: float | None = None
) -> LatencyCurves:
    """Measure ``engine`` (an idle ``halo.engine.LLMEngine``) over ``grid`` and fit its latency curves.

    ``model`` is the key the curves are cached under (default: the checkpoint's name); ``load_s`` the
    measured time it took to construct the engine, recorded as the model's load time.
    """
    grid = grid or ProfileGrid()
    timer = EngineTimer(engine)
    t_start = time.perf_counter()
    timer.prefill(128, repeats=2)  # warm-up: first-touch allocations, thread pool, kernels
    timer.decode(8, 64, repeats=1)
    prefill = [timer.prefill(n, c, 1, grid.repeats) for c in grid.prefill_cached for n in grid.prefill_new]
    prefill += [timer.prefill(n, 0, b, grid.repeats) for b, n in grid.prefill_batched]
    decode = [s for c in grid.decode_context for s in timer.decode_sweep(grid.decode_batch, c, grid.repeats)]
    kv_per_token, kv_bandwidth = timer.kv_copy(grid.kv_copy_tokens, grid.repeats)
    info = engine.describe()
    facts = {
        "cpu": info.get("cpu"),
        "probe_gflops": info.get("probe_gflops"),
        "attention": info.get("attention"),
        "profile_seconds": round(time.perf_counter() - t_start, 2),
        "prefill_samples": [list(s) for s in prefill],
        "decode_samples": [list(s) for s in decode],
    }
    curves = fit_latency_curves(
        prefill,
        decode,
        model=model or engine.config.name,
        dtype=info["dtype"],
        device=str(info["device"]).split(":")[0],
        threads=int(info["threads"]),
        step_tokens=engine.batch_scheduler.max_batch_tokens,
        facts=facts,
    )
    # int8/int4 weights are profiled under a key of their own (plan/cost/profile_cache.py); float
    # weights are the dtype's, keyed by it alone
    weights = info.get("weights") if quantized(info.get("weights")) else None
    return replace(
        curves, model_load_s=load_s, kv_bytes_per_token=kv_per_token, kv_bytes_per_s=kv_bandwidth, weights=weights
    )
