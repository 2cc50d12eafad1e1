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


class ToolError(HaloError):
    """A tool call (sql, http, python, rule) failed; `node_id` names the graph node that made it."""

    def __init__(self, node_id: str, message: str) -> None:
        super().__init__(f"{node_id}: {message}")
        self.node_id = node_id
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.node_id, self.message))  # picklable across processes (Ray, pools)
