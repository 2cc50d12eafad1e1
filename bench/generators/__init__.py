"""Deterministic data for the benchmark workloads: TPC-H, documents, questions, problems, the report API."""
