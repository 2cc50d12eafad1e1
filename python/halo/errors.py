"""The exceptions Halo raises: each names what went wrong and where, so a user can fix the input."""


class HaloError(Exception):
    """Base class of every error Halo raises on purpose."""


class ModelLoadError(HaloError):
    """A model name, file or directory could not be resolved or read (the message names the file)."""


class InvalidRequestError(HaloError, ValueError):
    """A generation request is malformed: empty prompt, bad sampling parameters, unknown fields."""


class ContextLengthError(InvalidRequestError):
    """A prompt (plus its max_tokens) does not fit the model's context window."""


class KVCacheFullError(HaloError):
    """A single request needs more KV blocks than the whole pool holds, even after preemption."""
