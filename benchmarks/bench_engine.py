"""Simulation speed and memory: simulated requests per wall-clock second on one core.

Workload: the chat traffic of scenarios/paged-vs-contiguous-h100.yaml (Llama-3-8B on one H100,
Poisson arrivals at 21 req/s, exponential prompt and output lengths) for 10k, 30k and 100k
requests, paged and contiguous (max_model_len). Each point runs in its own process pinned to
one thread, so the peak-RSS growth between sizes shows whether memory stays flat.

    python benchmarks/bench_engine.py [--sizes 10000,30000,100000] [--variants paged,...]

Also times the same paged run stepping one step at a time (no fast-forward), in the same
invocation, to report the ratio. Run on demand (not part of the test suite): timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "paged-vs-contiguous-h100.yaml"

CHILD = r"""
import json, resource, sys, time
import simkv
from simkv.simulate import build_simulation
from simkv.files.scenario_file import expand_variants
from simkv.simulate import run_simulation
from simkv.workload.stream import generate_stream
n, variant, max_repeat = int(sys.argv[1]), sys.argv[2], int(sys.argv[4])
extra = sys.argv[5:]
sc = simkv.load_scenario(sys.argv[3], [f"run.num_requests={n}", "run.duration_s=null", "run.warmup_s=0", *extra])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
sim = build_simulation(dict(expand_variants(sc))[variant], generate_stream(sc.workload, sc.run))
if max_repeat:
    sim.scheduler.max_repeat = max_repeat
res = run_simulation(sim, variant)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "rss_before_mib": before / 1024, "rss_peak_mib": peak / 1024,
                  "steps": res.summary["batch"]["steps"], "sim_span_s": res.summary["throughput"]["makespan_s"],
                  "mean_batch": res.summary["batch"]["mean_running"]}))
"""


def run_point(n: int, variant: str, max_repeat: int = 0, overrides: tuple[str, ...] = ()) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(n), variant, str(SCENARIO), str(max_repeat), *overrides],
                          capture_output=True,
                          text=True, env=env, cwd=ROOT, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--variants", default="paged,contiguous-max_model_len")
    ap.add_argument("--baseline", type=int, default=5000,
                    help="also time this many paged requests stepping one step at a time (0: skip)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'variant':26s} {'requests':>9s} {'wall s':>7s} {'req/s':>8s} {'steps':>9s} {'sim span s':>10s} "
          f"{'mean batch':>10s} {'RSS growth MiB':>14s}")
    for variant in args.variants.split(","):
        for n in sizes:
            r = run_point(n, variant)
            print(f"{variant:26s} {n:9,d} {r['wall_s']:7.2f} {n / r['wall_s']:8,.0f} {r['steps']:9,d} "
                  f"{r['sim_span_s']:10,.0f} {r['mean_batch']:10.1f} {r['rss_peak_mib'] - r['rss_before_mib']:14.1f}")
    if args.baseline:
        n = args.baseline
        print(f"\nfast-forward vs one step at a time, {n:,} paged requests:")
        for label, overrides in (("scenario load", ()), ("light load, 3 req/s", ("workload.arrival.rate=3",))):
            fast = run_point(n, "paged", overrides=overrides)
            slow = run_point(n, "paged", max_repeat=1, overrides=overrides)
            print(f"  {label:20s} {fast['steps']:9,d} steps, mean batch {fast['mean_batch']:6.1f}: "
                  f"{fast['wall_s']:6.2f} s vs {slow['wall_s']:6.2f} s ({slow['wall_s'] / fast['wall_s']:.1f}x)")


if __name__ == "__main__":
    main()
