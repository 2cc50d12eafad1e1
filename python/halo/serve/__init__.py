"""Online mode: an HTTP server (FastAPI + uvicorn) for workflow runs and OpenAI-compatible chat completions.

Workflow runs are buffered into short epochs (`epoch_batcher`) and each epoch runs as one batch through
`CompiledWorkflow.run`, so consolidation and prefix sharing apply across concurrent clients; epochs
overlap on the runtime's `OnlineSession`, the one thread stepping every engine. Chat completions are
guest requests on that same thread (`chat_front`): on a workflow's engine when the model is the same,
else on the chat engine's own worker; either way concurrent requests join one continuous batch.
`create_app` builds the ASGI app; `serve` loads workflows and runs uvicorn.
"""

from halo.serve.app import create_app
from halo.serve.config import ServeConfig
from halo.serve.server import load_workflows, serve

__all__ = ["ServeConfig", "create_app", "load_workflows", "serve"]
