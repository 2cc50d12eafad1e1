"""Halo: batch query processing and optimization for agentic LLM workflows."""

__version__ = "0.1.0"
