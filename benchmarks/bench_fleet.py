"""Per-request simulation cost of a fleet against one replica (issue 14: a 16-replica fleet should
cost at most 1.5x per request). Each replica sees the same load (rate x N for N replicas).

    PYTHONPATH=$PWD python benchmarks/bench_fleet.py [requests_per_replica] [replicas] [policy]
"""

from __future__ import annotations

import sys
import time

import simkv
from simkv.files.scenario_file import validate_scenario


def scenario(replicas: int, per_replica: int, policy: str):
    raw = dict(name="bench-fleet", model="llama3-8b", hardware={"gpu": "h100"},
               engine={"preset": "vllm-v1", "max_model_len": 8192},
               workload={"arrival": {"process": "poisson", "rate": 10.0 * replicas},
                         "prompt_tokens": {"dist": "lognormal", "mean": 1000, "p99": 4000},
                         "output_tokens": {"dist": "exponential", "mean": 250, "max": 2048}},
               run={"seed": 0, "num_requests": per_replica * replicas})
    if replicas > 1:
        raw["fleet"] = {"router": {"policy": policy}, "pools": [{"name": "p", "replicas": replicas}]}
    return validate_scenario(raw, "bench")


def per_request_s(replicas: int, per_replica: int, policy: str) -> float:
    sc = scenario(replicas, per_replica, policy)
    t = time.perf_counter()
    simkv.simulate(sc)
    return (time.perf_counter() - t) / (per_replica * replicas)


if __name__ == "__main__":
    per = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    policies = sys.argv[3:] or ["round_robin", "least_loaded"]
    one = per_request_s(1, per, "round_robin")
    print(f"1 replica: {one * 1e6:.0f} us/request")
    for policy in policies:
        many = per_request_s(n, per, policy)
        print(f"{n} replicas, {policy}: {many * 1e6:.0f} us/request ({many / one:.2f}x one replica)")
