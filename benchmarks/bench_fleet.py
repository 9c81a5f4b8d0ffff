"""Per-request simulation cost of a fleet against one replica (issue 17: a 16-replica fleet should
cost at most 1.5x per request). Each replica sees the same load (rate x N for N replicas) and the
same number of requests, so each replica of the fleet simulates what the lone replica does.

    PYTHONPATH=$PWD python benchmarks/bench_fleet.py [requests_per_replica] [replicas] [policy ...] [--presets P,...]

Presets (default vllm-v1,tgi,simkv): vLLM V1, TGI and simkv's FCFS paged replicas run fused alone
(from 5,000 requests) and in a fleet behind round robin, random or least_loaded (simkv.fused.fleet).

Each point runs in a process of its own, after a warm-up run of the same simulation: the first
simulation in a process also pays for imports, calibration tables and the cost curves of each batch
size (0.5-0.9 s here), and charging that to the lone replica, as this benchmark did until 2026-12-04,
made fleets look up to ~2x cheaper against it than they are. The lone replica's point is the median
of several runs (one is ~0.5 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import simkv
from simkv import fused
from simkv.files.scenario_file import validate_scenario

from bench_engine import ROOT, median_run, run_child


def scenario(replicas: int, per_replica: int, policy: str, preset: str = "vllm-v1"):
    raw = dict(name="bench-fleet", model="llama3-8b", hardware={"gpu": "h100"},
               engine={"preset": preset, "max_model_len": 8192},
               workload={"arrival": {"process": "poisson", "rate": 10.0 * replicas},
                         "prompt_tokens": {"dist": "lognormal", "mean": 1000, "p99": 4000},
                         "output_tokens": {"dist": "exponential", "mean": 250, "max": 2048}},
               run={"seed": 0, "num_requests": per_replica * replicas})
    if replicas > 1:
        raw["fleet"] = {"router": {"policy": policy}, "pools": [{"name": "p", "replicas": replicas}]}
    return validate_scenario(raw, "bench")


def _point(replicas: int, per_replica: int, policy: str, preset: str, min_s: float = 5.0) -> dict:
    """(wall, CPU) seconds per request of the simulation, after a warm-up run of the same one (this
    process: imports, calibration tables, cost curves of every batch size met), of as
    many runs as take `min_s`, the one with the median CPU time (at least one; a lone replica's run
    is short, and one short run varies by +-25% on a shared machine; a fleet's point is usually one
    run)."""
    sc = scenario(replicas, per_replica, policy, preset)
    simkv.simulate(sc)
    n, runs, start = per_replica * replicas, [], time.perf_counter()
    while not runs or time.perf_counter() - start < min_s:
        wall, cpu = time.perf_counter(), time.process_time()
        simkv.simulate(sc)
        runs.append({"wall_s": (time.perf_counter() - wall) / n, "cpu_s": (time.process_time() - cpu) / n})
    return {**median_run(runs), "runs": len(runs), "engine": fused.last_outcome[0] or "default"}


def per_request_s(replicas: int, per_replica: int, policy: str, preset: str) -> dict:
    """_point in a new single-threaded process (bench_engine's, as for its own points)."""
    return run_child([__file__, "--point", str(replicas), str(per_replica), policy, preset], ROOT,
                     f"fleet point {replicas} x {per_replica} {policy} {preset}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--point"]:
        print(json.dumps(_point(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("per", nargs="?", type=int, default=1000, help="requests per replica")
    ap.add_argument("replicas", nargs="?", type=int, default=16)
    ap.add_argument("policies", nargs="*", default=["round_robin", "least_loaded"])
    ap.add_argument("--presets", default="vllm-v1,tgi,simkv")
    args = ap.parse_args()
    per, n = args.per, args.replicas
    for preset in args.presets.split(","):
        one = per_request_s(1, per, "round_robin", preset)
        print(f"{preset}: 1 replica, {per:,d} requests: {one['wall_s'] * 1e6:.0f} us/request wall "
              f"({one['cpu_s'] * 1e6:.0f} CPU; median of {one['runs']} runs; {one['engine']})", flush=True)
        for policy in args.policies:
            many = per_request_s(n, per, policy, preset)
            print(f"{preset}: {n} replicas x {per:,d} requests, {policy}: {many['wall_s'] * 1e6:.0f} us/request wall "
                  f"({many['wall_s'] / one['wall_s']:.2f}x one replica; CPU {many['cpu_s'] / one['cpu_s']:.2f}x; "
                  f"{many['engine']})", flush=True)
