"""Requests: arrival processes and length distributions, sampled from a seeded Generator.
Knows nothing of engines; engine limits (max_model_len) are applied by `simkv.build`."""

from simkv.workload.stream import RequestStream, generate_stream

__all__ = ["RequestStream", "generate_stream"]
