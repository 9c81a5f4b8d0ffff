"""Shared test helpers: small scenarios built in code, and hypothesis profiles sized for CI."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

from simkv.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def small_scenario(**over) -> Scenario:
    """A tiny llama3-8b scenario with a small KV cache, so memory pressure is easy to reach."""
    raw = {
        "name": "test",
        "model": "llama3-8b",
        "hardware": {"gpu": "h100"},
        "engine": {"allocator": "paged", "block_size": 16, "num_gpu_blocks": 64, "max_num_seqs": 16,
                   "max_model_len": 512, "max_num_batched_tokens": 1024},
        "workload": {"arrival": {"process": "poisson", "rate": 50.0},
                     "prompt_tokens": {"dist": "uniform", "low": 10, "high": 200},
                     "output_tokens": {"dist": "uniform", "low": 1, "high": 150}},
        "run": {"seed": 3, "num_requests": 60},
    }
    for key, value in over.items():
        node = raw
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return Scenario(**raw)
