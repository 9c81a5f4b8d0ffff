"""Where a run's time goes: iterations (plan, step time, commit, record) and engine steps per
request, and CPU microseconds per iteration, for bench_engine's workloads and for the paged load at
growing batch sizes (issue 17: the cost of an iteration should not grow with the batch).

    PYTHONPATH=$PWD python benchmarks/bench_iterations.py [--workloads paged,tgi,...] [--no-batch-sizes]

An iteration is one call of the recorder's `on_steps` (one commit of one or more identical steps),
counted by wrapping it in this process; the steps counted that way are checked against the
summary's own step count. Run phase only (build excluded), CPU time, one process: timings depend on
the machine and its load, so compare rows of one run.
"""

from __future__ import annotations

import argparse
import time

import simkv
from simkv import metrics
from simkv.files.scenario_file import expand_variants
from simkv.simulate import build_simulation, run_simulation
from simkv.workload.stream import generate_stream

from bench_engine import WORKLOADS

ITERATION_REQUESTS = {"paged": 10_000, "contiguous": 10_000, "tgi": 10_000, "vllm-v1-sessions": 3_000}
BATCH_SIZES = ((16, 6, 6_000), (64, 20, 10_000), (256, 60, 20_000), (1024, 150, 40_000))   # max_num_seqs, rate, requests


class _Counts:
    """Iterations, steps and sequence-steps seen by Recorder.on_steps."""

    def __init__(self) -> None:
        self.iterations = self.steps = self.seq_steps = 0

    def install(self):
        counts, original = self, metrics.Recorder.on_steps

        def on_steps(rec, start_s, outcome, durations_s):
            counts.iterations += 1
            counts.steps += len(durations_s)
            counts.seq_steps += outcome.num_running * len(durations_s)
            return original(rec, start_s, outcome, durations_s)

        metrics.Recorder.on_steps = on_steps
        return original


def measure(path: str, variant: str, overrides: list[str]) -> tuple[_Counts, float, int]:
    """(counts, CPU seconds of the run phase, requests) of one variant."""
    sc = simkv.load_scenario(path, ["run.duration_s=null", "run.warmup_s=0", *overrides])
    sim = build_simulation(dict(expand_variants(sc))[variant], generate_stream(sc.workload, sc.run))
    counts = _Counts()
    original = counts.install()
    try:
        t0 = time.process_time()
        result = run_simulation(sim, variant)
        cpu = time.process_time() - t0
    finally:
        metrics.Recorder.on_steps = original
    if counts.steps != result.summary["batch"]["steps"]:
        raise SystemExit(f"{path}:{variant}: {counts.steps} steps counted, the summary has {result.summary['batch']['steps']}")
    return counts, cpu, sc.run.num_requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--no-batch-sizes", action="store_true", help="skip the paged load at growing batch sizes")
    args = ap.parse_args()
    print(f"{'workload':18s} {'requests':>9s} {'iter/req':>9s} {'steps/req':>10s} {'us/iter':>8s} {'req/s':>8s}")
    for name in args.workloads.split(","):
        path, variant, _ = WORKLOADS[name]
        c, cpu, n = measure(path, variant, [f"run.num_requests={ITERATION_REQUESTS[name]}"])
        print(f"{name:18s} {n:9,d} {c.iterations / n:9.2f} {c.steps / n:10.2f} {1e6 * cpu / c.iterations:8.1f} {n / cpu:8.0f}")
    if args.no_batch_sizes:
        return
    path, variant, _ = WORKLOADS["paged"]
    print(f"\n{'max_num_seqs':>12s} {'rate':>5s} {'requests':>9s} {'mean batch':>11s} {'us/iter':>8s} {'us/step':>8s} {'req/s':>8s}")
    for seqs, rate, n in BATCH_SIZES:
        c, cpu, n = measure(path, variant, [f"run.num_requests={n}", f"engine.max_num_seqs={seqs}",
                                            f"workload.arrival.rate={rate}", "engine.max_num_batched_tokens=65536"])
        print(f"{seqs:12d} {rate:5d} {n:9,d} {c.seq_steps / c.steps:11.1f} {1e6 * cpu / c.iterations:8.1f} "
              f"{1e6 * cpu / c.steps:8.1f} {n / cpu:8.0f}")


if __name__ == "__main__":
    main()
