"""Shared test helpers: small scenarios built in code, and hypothesis profiles sized for CI.

The default suite must finish in minutes on a small CPU-only machine: torch (validation and
calibration run on the CPU with tiny shapes) gets at most two threads, here and in every `simkv`
subprocess (they inherit the environment). Tests with real model shapes are marked `slow` and
run only when asked for (`make test-slow`, or `pytest -m slow`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TORCH_THREADS = 2
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, str(TORCH_THREADS))

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from simkv.scenario import Scenario  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _cap_torch_threads():
    """At most TORCH_THREADS torch threads in this process too (where a test imported torch)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() > TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
    yield


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
