"""Per-request simulation cost of a fleet against one replica (issue 17: a 16-replica fleet should
cost at most 1.5x per request). Each replica sees the same load (rate x N for N replicas) and the
same number of requests, so each replica of the fleet simulates what the lone replica does.

    PYTHONPATH=$PWD python benchmarks/bench_fleet.py [requests_per_replica] [replicas] [policy ...]

Each point runs in a process of its own, after a warm-up run of the same simulation: the first
simulation in a process also pays for imports, calibration tables and the cost curves of each batch
size (0.5-0.9 s here), and charging that to the lone replica, as this benchmark did until 2026-12-04,
made fleets look up to ~2x cheaper against it than they are. The lone replica's point is the median
of several runs (one is ~0.5 s).
"""

from __future__ import annotations

import json
import sys
import time

import simkv
from simkv.files.scenario_file import validate_scenario

from bench_engine import ROOT, median_run, run_child


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


def _point(replicas: int, per_replica: int, policy: str, min_s: float = 5.0) -> dict:
    """(wall, CPU) seconds per request of the simulation, after a warm-up run of the same one (this
    process: imports, calibration tables, cost curves of every batch size met), of as
    many runs as take `min_s`, the one with the median CPU time (at least one; a lone replica's run
    is short, and one short run varies by +-25% on a shared machine; a fleet's point is usually one
    run)."""
    sc = scenario(replicas, per_replica, policy)
    simkv.simulate(sc)
    n, runs, start = per_replica * replicas, [], time.perf_counter()
    while not runs or time.perf_counter() - start < min_s:
        wall, cpu = time.perf_counter(), time.process_time()
        simkv.simulate(sc)
        runs.append({"wall_s": (time.perf_counter() - wall) / n, "cpu_s": (time.process_time() - cpu) / n})
    return {**median_run(runs), "runs": len(runs)}


def per_request_s(replicas: int, per_replica: int, policy: str) -> dict:
    """_point in a new single-threaded process (bench_engine's, as for its own points)."""
    return run_child([__file__, "--point", str(replicas), str(per_replica), policy], ROOT,
                     f"fleet point {replicas} x {per_replica} {policy}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--point"]:
        print(json.dumps(_point(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
        sys.exit(0)
    per = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    policies = sys.argv[3:] or ["round_robin", "least_loaded"]
    one = per_request_s(1, per, "round_robin")
    print(f"1 replica, {per:,d} requests: {one['wall_s'] * 1e6:.0f} us/request wall ({one['cpu_s'] * 1e6:.0f} CPU; "
          f"median of {one['runs']} runs)")
    for policy in policies:
        many = per_request_s(n, per, policy)
        print(f"{n} replicas x {per:,d} requests, {policy}: {many['wall_s'] * 1e6:.0f} us/request wall "
              f"({many['wall_s'] / one['wall_s']:.2f}x one replica; CPU {many['cpu_s'] / one['cpu_s']:.2f}x)")
