"""`halo bench --online`: Poisson load against `halo serve` and against the per-call pattern on its chat endpoint.

- load_generator.py: seeded Poisson arrivals at one offered rate, each query timed until its outputs return;
- local_server.py: `halo serve`'s app under uvicorn on a free loopback port, in a thread of this process;
- workflow_target.py: (a) one row per request at POST /v1/workflows/{name}/runs, then GET ?wait=true;
- per_call_target.py: (b) the client walks the DAG, one /v1/chat/completions request per llm call,
  tools on a client-side runner without cache or coalescing;
- sweep.py: every workload x target x rate, and the fp32 output check against `app.run`;
- report.py: JSON, Markdown and the throughput-vs-offered-rate PNG.
"""
