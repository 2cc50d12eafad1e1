"""The Processor: executes an optimized plan over LLM workers and a CPU tool pool (pipeline stage 3)."""
