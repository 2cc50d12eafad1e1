"""Sampling parameters of one generation request, validated when they are made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from halo.engine.output_format import OutputFormat
from halo.errors import InvalidRequestError

if TYPE_CHECKING:
    from halo.engine.choice_scoring import ChoiceScores

MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes on every platform (and int64 servers)
MAX_LOGPROBS = 20  # top alternatives per token, OpenAI's top_logprobs bound


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. ``temperature == 0`` means greedy decoding."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # The shape the text must take, enforced while decoding (engine/grammar.py); None: free text.
    output_format: OutputFormat | None = None
    # None: no log-probabilities; 0: the chosen tokens' own; k > 0: also the k most likely alternatives.
    # Taken from log_softmax of the logits before temperature/top-k/top-p, after the format's mask
    # (docs/structured_outputs.md).
    logprobs: int | None = None
    # How a ``choices`` format picks its option: "greedy" decodes under the format's mask; "score" ranks
    # every option by the log-probability of its tokens after the prompt, in prefill only, with no
    # sampling (engine/choice_scoring.py; temperature, top-p/k, seed, stop and max_tokens do not apply).
    # ``length_normalized`` ranks scored options by their mean token logprob instead of the sum.
    choice_mode: Literal["greedy", "score"] = "greedy"
    length_normalized: bool = False

    def __post_init__(self) -> None:
        # Lists are accepted for convenience and frozen into tuples so the params stay hashable.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        problems = self.problems()
        if problems:
            raise InvalidRequestError("invalid SamplingParams: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            out.append(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not 0.0 <= self.temperature <= 10.0:
            out.append(f"temperature must be in [0, 10], got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            out.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            out.append(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED
        ):
            out.append(f"seed must be an integer in [0, 2**63 - 1] or None, got {self.seed!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                out.append(f"stop strings must be non-empty strings, got {s!r}")
        for t in self.stop_token_ids:
            if not isinstance(t, int) or t < 0:
                out.append(f"stop_token_ids must be non-negative integers, got {t!r}")
        if self.logprobs is not None and (
            not isinstance(self.logprobs, int)
            or isinstance(self.logprobs, bool)
            or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            out.append(f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        if self.output_format is not None and not isinstance(self.output_format, OutputFormat):
            out.append(f"output_format must be an OutputFormat or None, got {type(self.output_format).__name__}")
        if self.choice_mode not in ("greedy", "score"):
            out.append(f"choice_mode must be 'greedy' or 'score', got {self.choice_mode!r}")
        elif self.choice_mode == "score" and (
            not isinstance(self.output_format, OutputFormat) or self.output_format.kind != "choices"
        ):
            out.append("choice_mode='score' needs output_format=OutputFormat.of_choices(...)")
        if not isinstance(self.length_normalized, bool):
            out.append(f"length_normalized must be a bool, got {self.length_normalized!r}")
        elif self.length_normalized and self.choice_mode != "score":
            out.append("length_normalized applies to choice_mode='score' only")
        return out

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class GenerationResult:
    """What one prompt produced."""

    request_id: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    cached_tokens: int
    # "stop": a stop token/string, EOS, or the output format's end; "length": max_tokens or the context
    # window; "error": the output format's matcher failed mid-generation (format_error says why).
    finish_reason: str
    prompt_token_ids: list[int] = field(default_factory=list, repr=False)
    # False when a constrained output (params.output_format) ended before the format accepted it:
    # cut by max_tokens, the context window or a stop string, or a matcher error. Always True for free text.
    output_complete: bool = True
    format_error: str | None = None  # e.g. "json output truncated at max_tokens=64"; None when complete
    # With params.logprobs set: one entry per token of token_ids (jump-forward tokens: 0.0, forced).
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # k best (id, logprob), best first
    # choice_mode="score": every option's score, the chosen one and its confidence; text/token_ids are then
    # the chosen option's, token_logprobs its tokens' (with params.logprobs set). None for generation.
    choice_scores: ChoiceScores | None = None
