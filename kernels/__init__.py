"""Triton kernels (paged attention, KV block copy) and their torch references."""
