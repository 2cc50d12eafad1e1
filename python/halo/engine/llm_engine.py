"""LLMEngine: the request lifecycle — add_request → step() until done → results — over one model."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import asdict, dataclass
from typing import Any

import torch

from halo.engine.batch_invariant import DETERMINISTIC_DEFAULT
from halo.engine.batch_scheduler import BatchScheduler, ScheduledBatch
from halo.engine.block_manager import BlockManager
from halo.engine.checkpoint import Checkpoint, load_checkpoint
from halo.engine.choice_scoring import ChoiceScores, ScoringRequest
from halo.engine.dtype_probe import (
    DtypeChoice,
    WeightsChoice,
    choose_dtype,
    choose_weights,
    cpu_capability,
    matmul_gflops,
)
from halo.engine.grammar import GrammarCompiler
from halo.engine.kv_cache import KVCache
from halo.engine.kv_prefix import KVPrefix
from halo.engine.kv_swapper import KVSwapper
from halo.engine.model import DecoderModel
from halo.engine.model_runner import ModelRunner, ScoredRows
from halo.engine.output_format import OutputFormat
from halo.engine.quantized_linear import QUANTIZED_FORMATS, check_weight_format
from halo.engine.sampler import greedy_tokens, sample
from halo.engine.sampler import logprobs as token_logprobs
from halo.engine.sampling_params import GenerationResult, SamplingParams
from halo.engine.sequence import Sequence, SequenceStatus
from halo.engine.speculation import Speculator, StepCost
from halo.engine.speculative_modes import SPECULATIVE_DEFAULT
from halo.errors import ContextLengthError, InvalidRequestError, KVCacheFullError

Prompt = str | list[dict[str, str]] | list[int]


@dataclass
class EngineStats:
    """Counters since the engine started (or since ``reset_stats``)."""

    requests: int = 0  # finished requests
    prompt_tokens: int = 0  # prompt tokens of finished requests
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (first admission)
    prefill_tokens: int = 0  # prompt-position tokens actually computed (recompute after preemption included)
    decode_tokens: int = 0  # generated-position tokens computed (speculative drafts included)
    generated_tokens: int = 0  # tokens sampled
    jump_forward_tokens: int = 0  # tokens a grammar forced, appended without sampling (docs/structured_outputs.md)
    # decode steps sequences did not run thanks to jump-forward: one per forced token, less the steps
    # spent computing a forced tail that did not fit one step's token budget
    decode_steps_saved: int = 0
    masked_rows: int = 0  # logits rows masked by an output format
    mask_seconds: float = 0.0  # computing and applying those masks (part of step_seconds)
    grammar_seconds: float = 0.0  # all grammar work in steps: masks, advancing matchers, forced tokens
    grammar_compiles: int = 0  # output formats compiled (the per-engine cache's misses)
    scored_requests: int = 0  # finished choice_mode="score" requests (also counted in requests)
    scored_options: int = 0  # their options
    # option parts that started from a fork of the computed prompt's KV (the rest were queued and
    # reused the prompt's full blocks through the prefix cache)
    forked_options: int = 0
    steps: int = 0
    preemptions: int = 0
    swapped_out: int = 0  # preemptions whose KV went to host memory instead of being recomputed
    swapped_in: int = 0
    # speculative decoding (engine/speculation.py): draft tokens verified, how many the model agreed
    # with, and the decode steps sequences did not run thanks to them (accepted tokens a sequence kept:
    # a stop inside an accepted run drops the rest)
    speculative_proposed: int = 0
    speculative_accepted: int = 0
    speculative_steps_saved: int = 0
    speculative_verifies: int = 0  # sequence-steps that verified drafts
    step_seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted over proposed draft tokens (0.0 before any draft)."""
        return self.speculative_accepted / self.speculative_proposed if self.speculative_proposed else 0.0

    @property
    def tokens_per_verify(self) -> float:
        """Tokens a drafting sequence gained per verify step (1 + accepted per verify; 1.0 without drafts):
        what a decode cost per token could divide a drafting sequence's steps by."""
        return 1.0 + self.speculative_accepted / self.speculative_verifies if self.speculative_verifies else 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LLMEngine:
    """A paged-KV, continuously batching Llama engine. One instance serves one model on one worker.

    ``model`` is a registered name (default ``smollm2-135m``), a .gguf file, a Hugging Face-style
    directory, or an already loaded ``Checkpoint``. ``dtype="auto"`` picks bf16 only where a matmul
    probe shows it beats fp32 on this CPU. ``kv_blocks`` (default: ``kv_memory_gb`` worth) blocks of
    ``block_size`` tokens form the KV pool; ``max_batch_tokens`` bounds the tokens computed per step.
    ``swap_space_gb`` of host memory lets a preempted request keep its KV (copied out through the ring
    buffer when that is predicted cheaper than recomputing; 0 disables). ``device`` is ``cpu`` or
    ``cuda``; ``attention_backend`` ``auto`` picks the native CPU kernel on CPU, Triton on CUDA.
    ``pack_weights`` pre-packs bf16 CPU weights once for oneDNN (bit-identical, faster small batches).
    ``jump_forward`` appends the tokens an output format forces without decode steps (off: each is
    sampled under its mask, for benchmarks that measure what jump-forward saves).
    ``speculative`` drafts up to ``num_speculative_tokens`` tokens per greedy free-text sequence by
    prompt lookup and verifies them in the same forward (engine/speculation.py): ``auto`` only while a
    sequence's measured acceptance makes it faster, ``on`` always, ``off`` (default, until ``auto``'s
    cost is measured on a quiet machine and over the workloads: issue 21) never. Greedy outputs equal
    plain decoding's.

    ``deterministic`` makes the forward batch-invariant (engine/batch_invariant.py): a row's tokens
    are the same bits whether it runs alone or beside any other rows, with or without prefix-cache
    hits, in any prefill chunking, in every dtype and weight format.

    ``weights`` is how the weight matrices are stored: ``bf16``/``fp32`` keep them in the compute
    dtype (so either one alone also sets ``dtype``, and a different explicit ``dtype`` is an error);
    ``int8`` (a scale per output row) and ``int4`` (a scale and zero per 32 inputs) are weight-only
    quantized layers on CPU through torch's kernels, whose products take bf16 activations (an fp32
    ``dtype`` casts around them; norms, attention, residuals and the KV cache stay in ``dtype``);
    their head and embedding are int8. ``auto`` keeps the float format of ``dtype`` unless the weights
    would not fit the memory available, or the model has 1B+ parameters and a probe of its MLP shape
    shows int8 faster at decode batches 1 and 64; ``describe()`` says what it chose and why
    (quantized_linear.py, dtype_probe.choose_weights, docs/models.md "Weight formats").
    """

    def __init__(
        self,
        model: str | os.PathLike | Checkpoint | None = None,
        dtype: str | torch.dtype | None = "auto",
        kv_blocks: int | None = None,
        block_size: int = 16,
        max_batch_tokens: int = 1024,
        max_num_seqs: int = 128,
        kv_memory_gb: float = 1.0,
        enable_prefix_cache: bool = True,
        swap_space_gb: float = 1.0,
        device: str = "cpu",
        attention_backend: str = "auto",
        num_threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        pack_weights: bool = True,
        weights: str = "auto",
        jump_forward: bool = True,
        speculative: str = SPECULATIVE_DEFAULT,
        num_speculative_tokens: int = 4,
        deterministic: bool = DETERMINISTIC_DEFAULT,
    ) -> None:
        for name, value in (
            ("block_size", block_size),
            ("max_batch_tokens", max_batch_tokens),
            ("max_num_seqs", max_num_seqs),
        ):
            if not isinstance(value, int) or value < 1:
                raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}")
        if kv_blocks is not None and (not isinstance(kv_blocks, int) or kv_blocks < 1):
            raise InvalidRequestError(f"kv_blocks must be a positive integer, got {kv_blocks!r}")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidRequestError("device='cuda' was requested but torch sees no CUDA device")
        attention = _attention_backend(attention_backend, self.device)
        weights = check_weight_format(weights, self.device)
        if weights in ("bf16", "fp32"):
            # float weights are kept in the compute dtype: naming one names the other
            if dtype in (None, "auto"):
                dtype = weights
            elif choose_dtype(dtype).name != weights:
                raise InvalidRequestError(
                    f"weights={weights!r} keeps the weights in the compute dtype, but dtype={dtype!r}: "
                    f"give the same for both, or weights='int8'/'int4' for quantized weights"
                )
        if self.device.type == "cuda" and dtype in (None, "auto"):
            dtype = "bf16"  # the CPU matmul probe says nothing about a GPU
        self.dtype_choice: DtypeChoice = choose_dtype(dtype)
        # A loaded Checkpoint may be passed to build several engines from one load; its weights
        # dict is copied so the model can consume its own view of it. A float format keeps the weights
        # in the compute dtype, so they are loaded (and cached) cast; int8/int4 start from fp32 values.
        load_dtype = torch.float32 if weights in QUANTIZED_FORMATS else self.dtype_choice.dtype
        ckpt = model if isinstance(model, Checkpoint) else load_checkpoint(model, cache_dir, load_dtype)
        self.model_path = ckpt.path
        self.config = ckpt.config
        self.tokenizer = ckpt.tokenizer
        vocabulary = ckpt.grammar_vocabulary  # from the conversion cache: a faster first constrained request
        per_block = KVCache.bytes_per_block(self.config, block_size, self.dtype_choice.dtype)
        if kv_blocks is None:
            kv_blocks = max(16, int(kv_memory_gb * 2**30 // per_block))
        self.weights_choice: WeightsChoice = choose_weights(
            weights, self.dtype_choice.dtype, self.config, self.device, reserved_bytes=kv_blocks * per_block
        )
        if (
            self.weights_choice.name in QUANTIZED_FORMATS
            and not isinstance(model, Checkpoint)
            and (load_dtype != torch.float32)
        ):
            ckpt = load_checkpoint(model, cache_dir)  # auto picked int8/int4: quantize the fp32 values
        self.model = DecoderModel(
            ckpt.config,
            dict(ckpt.weights),
            self.dtype_choice.dtype,
            self.device,
            attention,
            pack_weights,
            weight_format=self.weights_choice.name,
            deterministic=deterministic,
        )
        del ckpt
        self.block_manager = BlockManager(kv_blocks, block_size, enable_prefix_cache)
        self.kv = KVCache(self.config, kv_blocks, block_size, self.dtype_choice.dtype, self.device)
        self.swapper = None
        if swap_space_gb > 0:
            prefill_rate = matmul_gflops(self.dtype_choice.dtype) * 1e9 / self.model.flops_per_token
            self.swapper = KVSwapper(self.kv, prefill_rate, int(swap_space_gb * 2**30))
        self.batch_scheduler = BatchScheduler(self.block_manager, max_batch_tokens, max_num_seqs, self.swapper)
        self.runner = ModelRunner(self.model, self.kv)
        self.grammar = GrammarCompiler(self.tokenizer, self.config.vocab_size, vocabulary=vocabulary)
        self.jump_forward = jump_forward
        c = self.config
        cost = StepCost(
            self.model.flops_per_token,
            4.0 * c.num_layers * c.num_heads * c.head_dim,
            matmul_gflops(self.dtype_choice.dtype) * 1e9,
        )
        self.speculator = Speculator(speculative, num_speculative_tokens, cost)
        self._compiles_base = 0
        self._stats = EngineStats()
        self._swap_base = (0, 0)
        self._ids = itertools.count()
        self._arrivals = itertools.count()
        self._requests: dict[str, Sequence] = {}
        self._scoring: dict[str, ScoringRequest] = {}  # by request id
        # each scoring part (Sequences hash by identity): its request, and its option (None: the prompt part)
        self._scoring_of: dict[Sequence, tuple[ScoringRequest, int | None]] = {}

    # ---- describing the engine ---------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Model, dtype and weight format (and why), CPU capability, pool size: printed by every benchmark."""
        return {
            "model": str(self.model_path),
            "dtype": self.dtype_choice.name,
            "dtype_reason": self.dtype_choice.reason,
            "probe_gflops": self.dtype_choice.gflops,
            "probe_stale": self.dtype_choice.probe_stale,  # why those figures may read slow (None: trusted)
            "cpu": cpu_capability(),
            "threads": torch.get_num_threads(),
            "device": str(self.device),
            "attention": self.model.attention.__name__.rsplit(".", 1)[-1],
            "packed_weights": self.model.packed_weights,
            "deterministic": self.model.deterministic,
            "weights": self.model.weight_format,
            "weights_reason": self.weights_choice.reason,
            "weights_probe_us": self.weights_choice.probe_us,
            "weight_layers": self.model.layer_formats(),
            "weight_bytes": self.model.weight_bytes(),
            "kv_blocks": self.block_manager.num_blocks,
            "block_size": self.block_manager.block_size,
        }

    # ---- requests ----------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: text as-is, a chat message list through the model's chat template."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("empty prompt: give at least one character or token")
            return self.tokenizer.encode_prompt(prompt)  # with the BOS the model expects (add_bos)
        if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            return self.tokenizer.encode(self.tokenizer.render_chat(prompt))
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
            if bad:
                raise InvalidRequestError(f"token ids out of range [0, {self.config.vocab_size}): {bad[:5]}")
            return list(prompt)
        if isinstance(prompt, list) and not prompt:
            raise InvalidRequestError("empty prompt: an empty list has no messages or tokens")
        raise InvalidRequestError(
            f"a prompt must be a string, a list of chat messages or a list of token ids, got {type(prompt).__name__}"
        )

    def _check_fits(self, prompt_ids: list[int], params: SamplingParams, where: str) -> None:
        ctx = self.config.context_length
        if len(prompt_ids) >= ctx:
            raise ContextLengthError(
                f"{where}: prompt has {len(prompt_ids)} tokens but the context window of "
                f"{self.config.name} is {ctx} (and at least one token must be generated)"
            )
        need = self.block_manager.blocks_for(min(len(prompt_ids) + params.max_tokens, ctx))
        if need > self.block_manager.num_blocks:
            raise KVCacheFullError(
                f"{where}: prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) needs {need} "
                f"KV blocks but the pool has only {self.block_manager.num_blocks}; raise kv_blocks or lower max_tokens"
            )

    def add_request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        group: str | None = None,
    ) -> str:
        """Validate and queue one request; returns its id. Nothing is queued if validation fails.

        ``group`` names requests alike (e.g. one workflow node's): speculation's acceptance measured
        on earlier members decides whether a new one starts drafting (engine/speculation.py)."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"params must be SamplingParams, got {type(params).__name__}")
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        if request_id in self._scoring:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        ids = self.encode_prompt(prompt)
        if params.choice_mode == "score":
            option_ids = self._option_ids(ids, params, f"request {request_id}")
            self._enqueue_scoring(request_id, ids, params, option_ids)
            return request_id
        self._check_fits(ids, params, f"request {request_id}")
        matcher = self._matcher(params, f"request {request_id}")
        self._enqueue(request_id, ids, params, matcher, group)
        return request_id

    def _option_ids(self, prompt_ids: list[int], params: SamplingParams, where: str) -> list[list[int]]:
        """Each option's token ids after the prompt: ``tokenizer.encode(option)``, the option's text on its
        own (no BOS), appended to the prompt's ids. An option that does not fit raises here."""
        assert params.output_format is not None
        options = params.output_format.choices
        option_ids = self.tokenizer.encode_batch(list(options))
        ctx, n = self.config.context_length, len(prompt_ids)
        for i, (text, ids) in enumerate(zip(options, option_ids, strict=True)):
            if not ids:
                raise InvalidRequestError(f"{where}: option {i} {text!r} encodes to no tokens")
            if n + len(ids) > ctx:
                raise ContextLengthError(
                    f"{where}: option {i} {text!r} has {len(ids)} tokens; after the prompt's {n} tokens it "
                    f"needs {n + len(ids)} positions but the context window of {self.config.name} is {ctx}"
                )
            need = self.block_manager.blocks_for(n + len(ids) - 1)
            if need > self.block_manager.num_blocks:
                raise KVCacheFullError(
                    f"{where}: scoring option {i} {text!r} after the prompt ({n} + {len(ids)} tokens) needs "
                    f"{need} KV blocks but the pool has only {self.block_manager.num_blocks}; raise kv_blocks"
                )
        return option_ids

    def _enqueue_scoring(
        self, request_id: str, ids: list[int], params: SamplingParams, option_ids: list[list[int]]
    ) -> None:
        assert params.output_format is not None
        req = ScoringRequest(
            request_id, ids, params.output_format.choices, option_ids, params.logprobs, params.length_normalized
        )
        seq = Sequence(
            request_id,
            ids,
            params,
            next(self._arrivals),
            self.config.context_length,
            score_from=len(ids) - 1,
        )
        self._scoring_of[seq] = (req, None)
        self._scoring[request_id] = req
        self.batch_scheduler.add(seq)

    def _matcher(self, params: SamplingParams, where: str):
        """The request's grammar matcher (None for free text); a format that cannot compile raises here,
        before anything is queued."""
        if params.output_format is None:
            return None
        try:
            return self.grammar.matcher(params.output_format)
        except InvalidRequestError as e:
            raise InvalidRequestError(f"{where}: {e}") from None

    def _enqueue(
        self, request_id: str, ids: list[int], params: SamplingParams, matcher=None, group: str | None = None
    ) -> None:
        seq = Sequence(
            request_id, ids, params, next(self._arrivals), self.config.context_length, matcher=matcher, group=group
        )
        self._requests[request_id] = seq
        self.batch_scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        seq = self._requests.pop(request_id, None)
        if seq is not None and not seq.is_finished:
            self.batch_scheduler.abort(seq)
        req = self._scoring.pop(request_id, None)
        for part in [s for s, (r, _) in self._scoring_of.items() if r is req] if req is not None else ():
            self.batch_scheduler.abort(part)
            del self._scoring_of[part]

    def has_unfinished(self) -> bool:
        return self.batch_scheduler.has_unfinished()

    # ---- the step loop -----------------------------------------------------------------------
    def step(self) -> list[GenerationResult]:
        """Schedule, run one forward pass, sample, and return the requests that finished in it."""
        t0 = time.perf_counter()
        self.speculator.propose(self.batch_scheduler.running, self.batch_scheduler.pending_prompt_tokens)
        batch = self.batch_scheduler.schedule()
        if not batch.seqs:
            if self.batch_scheduler.has_unfinished():
                raise KVCacheFullError("no request could be scheduled: the KV pool is too small for any of them")
            return []
        for seq, n in zip(batch.seqs, batch.num_new, strict=True):
            prompt_part = max(0, min(len(seq.prompt_ids), seq.num_computed + n) - seq.num_computed)
            self._stats.prefill_tokens += prompt_part
            self._stats.decode_tokens += n - prompt_part
            if seq.num_computed + n < min(seq.forced_end, seq.num_tokens) and seq.num_computed >= len(seq.prompt_ids):
                self._stats.decode_steps_saved -= 1  # a forced tail too long for this step's budget
        drafted = sum(len(s.draft_ids) for s in batch.seqs)
        samplers, logits, scored = self.runner.run(batch)
        for seq, n in zip(batch.seqs, batch.num_new, strict=True):
            seq.num_computed += n - len(seq.draft_ids)  # drafts count once verified (_accept_run)
            self.block_manager.publish(seq)
        finished: list[GenerationResult] = []
        for rows in scored:
            done = self._observe_scored(rows, logits)
            if done is not None:
                finished.append(done)
        if samplers:
            tokens, chosen_logprobs = self._select(logits[: len(samplers)], samplers)
            row = len(samplers)  # the drafting samplers' rows follow the samplers' own
            for seq, token, lp in zip(samplers, tokens, chosen_logprobs, strict=True):
                d = len(seq.draft_ids)
                if d:
                    done = self._accept_run(seq, token, lp, logits[row : row + d])
                    row += d
                else:
                    self._stats.generated_tokens += 1
                    done = self._accept(seq, token, lp)
                if done:
                    self.batch_scheduler.finish(seq)
                    finished.append(self._result(seq))
        self._stats.steps += 1
        self._stats.preemptions = self.batch_scheduler.num_preemptions
        seconds = time.perf_counter() - t0
        self._stats.step_seconds += seconds
        if batch.num_tokens == len(samplers) + drafted:
            # a step of decodes only (no prefill chunk): what auto mode prices drafts against
            self.speculator.cost.observe(seconds, len(samplers), drafted)
        return finished

    def _accept_run(self, seq: Sequence, first: int, first_lp, draft_logits: torch.Tensor) -> bool:
        """Verify a drafting sequence's drafts (engine/speculation.py): the model's greedy choices walk
        the drafts while they agree, giving ``first``, then one token per agreeing draft. Each is appended
        through `_append_token`, so a stop, EOS or length limit inside the run ends the sequence exactly
        where plain decoding would. Returns True when finished.

        Invariant after: ``num_computed`` counts the accepted drafts (their K/V were computed from the
        very tokens plain decoding would have had there) and no more; the block table is cut back to
        it, and only then are full blocks offered to the prefix cache."""
        drafts, seq.draft_ids = seq.draft_ids, []
        choices = greedy_tokens(draft_logits)
        run = [first]
        while len(run) <= len(drafts) and run[-1] == drafts[len(run) - 1]:
            run.append(choices[len(run) - 1])
        accepted = len(run) - 1
        want_lp = seq.params.logprobs is not None
        if want_lp and accepted:
            rest = token_logprobs(draft_logits[:accepted], [seq] * accepted, run[1:])
        done = False
        appended = 0
        observe = self.runner.on_logits
        for i, token in enumerate(run):
            lp = first_lp if i == 0 else (rest[i - 1] if want_lp else None)
            if i and observe is not None:  # the test hook sees each chosen token's row, as in plain decoding
                observe([seq], draft_logits[i - 1 : i])
            self._stats.generated_tokens += 1
            appended += 1
            if self._append_token(seq, token, lp):
                done = True
                break
        before = seq.num_computed
        seq.num_computed = min(before + accepted, seq.num_tokens)
        self.block_manager.trim(seq)
        self.block_manager.publish(seq)
        self.speculator.record(seq, len(drafts), accepted)
        self._stats.speculative_proposed += len(drafts)
        self._stats.speculative_accepted += accepted
        self._stats.speculative_steps_saved += appended - 1
        self._stats.speculative_verifies += 1
        return done

    def _observe_scored(self, rows: ScoredRows, logits: torch.Tensor) -> GenerationResult | None:
        """Record a scoring part's logprobs; a part whose tokens are all computed finishes (the prompt
        part first forks the option parts). Returns the request's result when its last part finished."""
        seq = rows.seq
        req, option = self._scoring_of[seq]
        req.observe(option, rows.first_position, logits[rows.row : rows.row + rows.count])
        if seq.num_computed < seq.num_tokens:
            return None
        if option is None:
            req.cached_tokens = seq.num_cached
            for index, tokens in req.option_parts():
                part = Sequence(
                    req.option_request_id(index),
                    tokens,
                    seq.params,
                    seq.arrival,
                    self.config.context_length,
                    score_from=len(req.prompt_ids),
                )
                req.parts_left += 1
                self._scoring_of[part] = (req, index)
                if self._fork_prompt(seq, part):
                    self._stats.forked_options += 1
                    self.batch_scheduler.add_running(part)
                else:
                    self.batch_scheduler.add(part)
        self.batch_scheduler.finish(seq)
        req.parts_left -= 1
        del self._scoring_of[seq]
        return self._scored_result(req) if req.parts_left == 0 else None

    def _fork_prompt(self, prompt: Sequence, child: Sequence) -> bool:
        """Give ``child`` (tokens: the prompt's + more) the computed prompt's KV: the full blocks shared by
        reference (cached blocks are never written again), the partly filled last block copied into a
        block of its own, where the child writes its next tokens. False, with nothing changed, when no
        block is free for the copy."""
        bm = self.block_manager
        n = prompt.num_computed
        assert n == prompt.num_tokens and child.tokens[:n] == prompt.tokens and not child.block_table
        full = n // bm.block_size
        copy: list[int] = []
        if n % bm.block_size:
            if bm.num_free < 1:
                bm.tree.evict(1)
            if bm.num_free < 1:
                return False
            copy = bm.allocator.allocate(1)
            self.kv.write_blocks(copy, *self.kv.read_blocks(prompt.block_table[full : full + 1]))
        shared = prompt.block_table[:full]
        if shared:
            bm.allocator.incref(shared)
        child.block_table = list(shared) + copy
        child.num_computed = n
        child.num_published_blocks = min(full, prompt.num_published_blocks)
        return True

    def _scored_result(self, req: ScoringRequest) -> GenerationResult:
        self._scoring.pop(req.request_id, None)
        scores = req.scores()
        chosen = scores.options[scores.chosen]
        cached = req.cached_tokens
        self._stats.requests += 1
        self._stats.scored_requests += 1
        self._stats.scored_options += len(scores.options)
        self._stats.prompt_tokens += len(req.prompt_ids)
        self._stats.cached_tokens += cached
        want = req.logprobs_wanted
        return GenerationResult(
            request_id=req.request_id,
            text=chosen.text,
            token_ids=list(chosen.token_ids),
            prompt_tokens=len(req.prompt_ids),
            cached_tokens=cached,
            finish_reason="stop",
            prompt_token_ids=req.prompt_ids,
            token_logprobs=list(chosen.token_logprobs) if want is not None else [],
            top_logprobs=[list(t) for t in req.top[scores.chosen]] if want is not None else [],
            choice_scores=scores,
        )

    def _select(self, logits: torch.Tensor, samplers: list[Sequence]):
        """Mask the constrained rows, pick a token per row, and the logprobs asked for."""
        rows = [i for i, s in enumerate(samplers) if s.matcher is not None]
        if rows:
            t0 = time.perf_counter()
            self.grammar.apply_masks(
                logits, rows, [samplers[i].matcher for i in rows], [not samplers[i].params.ignore_eos for i in rows]
            )
            spent = time.perf_counter() - t0
            self._stats.masked_rows += len(rows)
            self._stats.mask_seconds += spent
            self._stats.grammar_seconds += spent
        tokens = sample(logits, samplers)
        return tokens, token_logprobs(logits, samplers, tokens)

    def _accept(self, seq: Sequence, token: int, lp) -> bool:
        """Record a sampled token, then (constrained) the tokens its grammar now forces; True when finished."""
        if seq.matcher is None:
            return self._append_token(seq, token, lp)
        t0 = time.perf_counter()
        try:
            done = self._append_token(seq, token, lp)
            while not done and self.jump_forward:
                forced = seq.matcher.compute_ff_tokens()
                if not forced:
                    break
                self._stats.jump_forward_tokens += len(forced)
                self._stats.decode_steps_saved += len(forced)
                for t in forced:
                    done = self._append_token(seq, t, (0.0, [(t, 0.0)]), forced=True)
                    if done:
                        break
                seq.forced_end = seq.num_tokens
            return done
        finally:
            self._stats.grammar_seconds += time.perf_counter() - t0

    def _append_token(self, seq: Sequence, token: int, lp=None, forced: bool = False) -> bool:
        """Record one token (sampled, or forced by the grammar); returns True when the sequence is finished.

        Constrained sequences: the matcher consumes every appended token; the output is complete when
        the grammar stops (only EOS could follow), and a stop token/string or a length limit reached
        before the grammar accepts marks it incomplete (``format_error``)."""
        p = seq.params
        m = seq.matcher
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.tokenizer.stop_ids):
            seq.finish_reason = "stop"
            if m is not None and not m.is_accepting():
                self._incomplete(seq, f"ended by stop token {token}")
            return True
        seq.output_ids.append(token)
        if lp is not None and p.logprobs is not None:
            seq.token_logprobs.append(lp[0])
            seq.top_logprobs.append(lp[1][: p.logprobs] if p.logprobs else [])
        if m is not None and not m.consume_token(token):
            seq.finish_reason = "error"
            self._incomplete(seq, f"matcher error after {len(seq.output_ids)} tokens: {m.get_error().strip()}")
            return True
        if p.stop:
            text = self.tokenizer.decode(seq.output_ids)
            hits = [(i, s) for i, s in ((text.find(s), s) for s in p.stop) if i >= 0]
            if hits:
                at, stop = min(hits)
                seq.text = text[:at]
                seq.finish_reason = "stop"
                if m is not None and not self.grammar.accepts_text(p.output_format, seq.text):
                    self._incomplete(seq, f"cut by stop string {stop!r} before it was complete")
                return True
        if m is not None and m.is_stopped():
            seq.finish_reason = "stop"
            return True
        if len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= seq.max_len:
            seq.finish_reason = "length"
            if m is not None and not m.is_accepting():
                limit = (
                    f"max_tokens={p.max_tokens}"
                    if len(seq.output_ids) >= p.max_tokens
                    else (f"the context window ({seq.max_len} tokens)")
                )
                self._incomplete(seq, f"truncated at {limit}")
            return True
        return False

    def _incomplete(self, seq: Sequence, why: str) -> None:
        fmt = seq.params.output_format
        seq.output_complete = False
        seq.format_error = f"{fmt.kind if fmt is not None else 'constrained'} output {why}"

    def _result(self, seq: Sequence) -> GenerationResult:
        self._requests.pop(seq.request_id, None)
        if seq.text is None:
            seq.text = self.tokenizer.decode(seq.output_ids)
        self._stats.requests += 1
        self._stats.prompt_tokens += len(seq.prompt_ids)
        self._stats.cached_tokens += seq.num_cached
        return GenerationResult(
            request_id=seq.request_id,
            text=seq.text,
            token_ids=list(seq.output_ids),
            prompt_tokens=len(seq.prompt_ids),
            cached_tokens=seq.num_cached,
            finish_reason=seq.finish_reason or "length",
            prompt_token_ids=seq.prompt_ids,
            output_complete=seq.output_complete,
            format_error=seq.format_error,
            token_logprobs=list(seq.token_logprobs),
            top_logprobs=[list(t) for t in seq.top_logprobs],
        )

    # ---- batch API ---------------------------------------------------------------------------
    def generate(
        self,
        prompts: Seq[Prompt],
        params: SamplingParams | Seq[SamplingParams] | None = None,
        progress: bool = False,
    ) -> list[GenerationResult]:
        """Generate for every prompt; results in prompt order. All prompts are validated first.

        The engine's own offline API, stepping it on the caller's thread until these prompts finish. The
        runtime's one loop (`halo.runtime.run_loop.RunLoop`) never calls it; what does is meant to see
        the engine alone: `halo generate`, and the plain per-call reference (`runtime/serial.py`) that
        the fidelity tests hold the run loop's outputs against."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            raise InvalidRequestError("generate() takes a list of prompts; wrap a single prompt in a list")
        plist = list(params) if isinstance(params, (list, tuple)) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise InvalidRequestError(f"got {len(plist)} SamplingParams for {len(prompts)} prompts")
        encoded = []
        for i, (prompt, p) in enumerate(zip(prompts, plist, strict=True)):
            if not isinstance(p, SamplingParams):
                raise InvalidRequestError(f"prompt {i}: params must be SamplingParams, got {type(p).__name__}")
            try:
                ids = self.encode_prompt(prompt)
            except InvalidRequestError as e:
                raise type(e)(f"prompt {i}: {e}") from None
            if p.choice_mode == "score":
                encoded.append((ids, self._option_ids(ids, p, f"prompt {i}")))
                continue
            self._check_fits(ids, p, f"prompt {i}")
            encoded.append((ids, self._matcher(p, f"prompt {i}")))
        rids = []
        for (ids, prepared), p in zip(encoded, plist, strict=True):
            rid = f"req-{next(self._ids)}"
            if p.choice_mode == "score":
                self._enqueue_scoring(rid, ids, p, prepared)
            else:
                self._enqueue(rid, ids, p, prepared)
            rids.append(rid)
        results: dict[str, GenerationResult] = {}
        bar = _progress_bar(len(rids)) if progress else None
        try:
            while len(results) < len(rids):
                for r in self.step():
                    results[r.request_id] = r
                    if bar is not None:
                        bar.update(1)
        except BaseException:
            for rid in rids:
                if rid not in results:
                    self.abort(rid)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[rid] for rid in rids]

    def score(
        self,
        prompts: Seq[Prompt],
        options: Seq[Seq[str]],
        length_normalized: bool = False,
        logprobs: int | None = None,
    ) -> list[ChoiceScores]:
        """Rank ``options[i]`` after ``prompts[i]`` by log-probability, without decoding: `generate` with
        ``SamplingParams(output_format=OutputFormat.of_choices(options[i]), choice_mode="score")``.
        A single list of options (of strings) applies to every prompt."""
        if options and isinstance(options[0], str):
            options = [options] * len(prompts)  # type: ignore[list-item]
        if len(options) != len(prompts):
            raise InvalidRequestError(f"got {len(options)} option lists for {len(prompts)} prompts")
        params = [
            SamplingParams(
                output_format=OutputFormat.of_choices(opts),
                choice_mode="score",
                length_normalized=length_normalized,
                logprobs=logprobs,
            )
            for opts in options
        ]
        results = self.generate(prompts, params)
        return [r.choice_scores for r in results if r.choice_scores is not None]

    def next_token_logits(self, prompt: Prompt) -> torch.Tensor:
        """fp32 logits ``[vocab]`` of the token after ``prompt``, computed outside the batch (scoring/tests)."""
        ids = self.encode_prompt(prompt)
        self._check_fits(ids, SamplingParams(max_tokens=1), "prompt")
        seq = Sequence("logits", ids, SamplingParams(max_tokens=1), -1, self.config.context_length)
        if not self.block_manager.can_append(seq, len(ids)):
            raise KVCacheFullError("no free KV blocks to score the prompt; wait for running requests to finish")
        self.block_manager.append(seq, len(ids))
        try:
            ctx, _, _ = self.runner.prepare(ScheduledBatch([seq], [len(ids)]))
            return self.model.forward(ctx, self.kv)[0]
        finally:
            self.block_manager.release(seq)

    # ---- KV migration ------------------------------------------------------------------------
    def export_prefix(self, prompt: Prompt) -> KVPrefix | None:
        """The K/V of the longest cached whole-block prefix of ``prompt`` (None when nothing is cached)."""
        ids = self.encode_prompt(prompt)
        blocks = self.block_manager.tree.match(ids)
        if not blocks:
            return None
        n = len(blocks) * self.block_manager.block_size
        k, v = self.kv.read_blocks(torch.tensor(blocks, dtype=torch.int64))
        return KVPrefix(self.config.name, tuple(ids[:n]), k, v)

    def import_prefix(self, prefix: KVPrefix) -> int:
        """Adopt an exported prefix into this engine's pool and prefix cache; returns tokens added.

        Blocks this engine already caches are kept; only the rest is copied in. The imported blocks
        belong to the prefix cache alone, so they are evicted like any cold cached prefix.
        """
        bs = self.block_manager.block_size
        expected = (self.config.num_layers, self.config.num_kv_heads, prefix.num_tokens, self.config.head_dim)
        if tuple(prefix.k.shape) != expected or prefix.num_tokens % bs:
            raise InvalidRequestError(
                f"KV prefix of model {prefix.model!r} has shape {tuple(prefix.k.shape)}; this engine "
                f"({self.config.name}, block size {bs}) needs {expected} with a multiple of {bs} tokens"
            )
        if prefix.k.dtype != self.kv.k.dtype:
            raise InvalidRequestError(f"KV prefix dtype {prefix.k.dtype} != engine dtype {self.kv.k.dtype}")
        tokens = list(prefix.token_ids)
        have = self.block_manager.tree.match(tokens)
        missing = prefix.num_tokens // bs - len(have)
        if missing == 0:
            return 0
        if missing > self.block_manager.num_free:
            self.block_manager.tree.evict(missing - self.block_manager.num_free)
            have = self.block_manager.tree.match(tokens)  # eviction may have taken part of our match
            missing = prefix.num_tokens // bs - len(have)
        if missing > self.block_manager.num_free:
            raise KVCacheFullError(f"importing {missing} KV blocks: only {self.block_manager.num_free} free")
        new = self.block_manager.allocator.allocate(missing)
        start = len(have) * bs
        self.kv.write_blocks(torch.tensor(new, dtype=torch.int64), prefix.k[:, :, start:], prefix.v[:, :, start:])
        self.block_manager.tree.insert(tokens, list(have) + new)
        self.block_manager.allocator.free(new)  # the tree keeps its own reference
        return missing * bs

    # ---- counters ----------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        s = EngineStats(**self._stats.as_dict())
        s.preemptions = self.batch_scheduler.num_preemptions
        s.grammar_compiles = self.grammar.compiles - self._compiles_base
        if self.swapper is not None:
            s.swapped_out = self.swapper.stats.swapped_out - self._swap_base[0]
            s.swapped_in = self.swapper.stats.swapped_in - self._swap_base[1]
        return s

    def reset_stats(self) -> None:
        self._stats = EngineStats()
        self._compiles_base = self.grammar.compiles
        if self.swapper is not None:
            self._swap_base = (self.swapper.stats.swapped_out, self.swapper.stats.swapped_in)
        self.batch_scheduler.num_preemptions = 0

    def reset_prefix_cache(self) -> None:
        self.block_manager.reset_prefix_cache()

    def cached_prefix_lengths(self, prompts: Iterable[list[int]]) -> list[int]:
        """For each prompt (token ids), how many of its leading tokens the prefix cache holds now, as a
        request added now would reuse them. Call it on the thread that steps the engine (planners
        ask it to price prefill against what earlier work left in the cache)."""
        return [self.block_manager.cached_prefix_len(list(p)) for p in prompts]

    def output_so_far(self, request_id: str) -> list[int] | None:
        """Token ids a request has generated so far (None for an unknown or aborted id); for
        streaming, read between steps on the thread that drives the engine."""
        seq = self._requests.get(request_id)
        if seq is None and request_id in self._scoring:
            return []  # a scoring request outputs its chosen option at the end, all at once
        return list(seq.output_ids) if seq is not None else None

    @property
    def num_waiting(self) -> int:
        return len(self.batch_scheduler.waiting)

    @property
    def num_running(self) -> int:
        return sum(1 for s in self.batch_scheduler.running if s.status is SequenceStatus.RUNNING)


def _attention_backend(name: str, device: torch.device):
    """``cpu`` (paged grouped attention on CPU) or ``triton`` (the GPU kernels); ``auto`` picks by device."""
    if name == "auto":
        name = "triton" if device.type == "cuda" else "cpu"
    if name == "cpu":
        if device.type != "cpu":
            raise InvalidRequestError(f"attention_backend='cpu' needs device='cpu', got {device}")
        from halo.engine import cpu_attention

        return cpu_attention
    if name == "triton":
        from halo.kernels import triton_available

        if not triton_available():
            raise InvalidRequestError(
                "attention_backend='triton' needs triton and a CUDA device "
                "(or TRITON_INTERPRET=1 to run the kernels on CPU)"
            )
        from halo.engine import triton_attention

        return triton_attention
    raise InvalidRequestError(f"attention_backend must be 'auto', 'cpu' or 'triton', got {name!r}")


def _progress_bar(total: int):  # tqdm is a dependency of gguf; imported lazily to keep start-up fast
    from tqdm import tqdm

    return tqdm(total=total, desc="generate", unit="req")
