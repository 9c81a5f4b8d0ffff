"""Simulation speed and memory: simulated requests and engine steps per wall-clock second on one
core, and peak RSS, for this tree and for the previous release, built and run in the same
invocation (so the ratio is read from one run on one machine, not across runs).

Workloads (each point in its own single-threaded process):

- paged chat: scenarios/paged-vs-contiguous-h100.yaml, variant `paged` (Llama-3-8B on one H100,
  Poisson chat at 17.5 req/s, FCFS continuous batching on paged blocks);
- contiguous: the same traffic, one region of max_model_len per request;
- tgi: scenarios/vllm-vs-tgi-h100.yaml, variant `tgi` (blocks for prompt + max_new_tokens
  reserved at admission);
- vllm-v1 sessions: scenarios/kv-offload-multiturn-h100.yaml, variant `no-offload` (vLLM V1
  preset: chunked prefill, prefix caching, multi-turn conversations).

    python benchmarks/bench_engine.py [--workloads paged,tgi,...] [--requests N] [--against REF | --no-against]
                                      [--million] [--fleet] [--default-engine] [--repeat N]

`--against REF` (default: PREVIOUS_RELEASE below) extracts that commit with `git archive` into a
temporary folder and runs the same points with it; `--million` adds one point of 1,000,000
paged-chat requests (this tree only); `--default-engine` also times this tree with its fused engines
off (SIMKV_FUSED=0; simkv.fused), side by side; `--fleet` adds the per-request cost of a 16-replica fleet
against one replica (benchmarks/bench_fleet.py: vLLM V1, TGI and paged FCFS at 6,000 requests a replica,
where a lone replica runs fused too); `--repeat N` runs each point N times, the two trees
interleaved, and shows the run with the median CPU time (a shared machine's load changes over
minutes; interleaving makes the ratio robust to it). Run on demand, not in the test suite: timings
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREVIOUS_RELEASE = "e6cf10c"   # the last landed engine before implicit progress (issue 17)

WORKLOADS = {   # name -> (scenario, variant, default requests)
    "paged": ("scenarios/paged-vs-contiguous-h100.yaml", "paged", 100_000),
    "contiguous": ("scenarios/paged-vs-contiguous-h100.yaml", "contiguous-max_model_len", 30_000),
    "tgi": ("scenarios/vllm-vs-tgi-h100.yaml", "tgi", 30_000),
    "vllm-v1-sessions": ("scenarios/kv-offload-multiturn-h100.yaml", "no-offload", 30_000),
}

CHILD = r"""
import json, resource, sys, time
import simkv
from simkv.files.scenario_file import expand_variants
from simkv.simulate import build_simulation, run_simulation
from simkv.workload.stream import generate_stream
path, variant, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sc = simkv.load_scenario(path, [f"run.num_requests={n}", "run.duration_s=null", "run.warmup_s=0"])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
sim = build_simulation(dict(expand_variants(sc))[variant], generate_stream(sc.workload, sc.run))
res = run_simulation(sim, variant)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
try:   # which engine ran it (trees before simkv.fused have one)
    import simkv.fused as fused
    engine = "fused" if fused.last_outcome[0] == "fused" else "default"
except ImportError:
    engine = "default"
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "steps": res.summary["batch"]["steps"], "engine": engine,
                  "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_start_mib": rss0 / 1024, "mean_batch": res.summary["batch"]["mean_running"]}))
"""


def run_child(argv: list[str], tree: Path, what: str, fused: bool = True) -> dict:
    """`python argv` in a new single-threaded process with `tree` on the path (no point inherits
    another's heap), fused engines on or off (SIMKV_FUSED); its last line of output, read as JSON."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(tree),
               SIMKV_FUSED="1" if fused else "0")
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode:
        raise RuntimeError(f"{what} failed in {tree}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_point(tree: Path, workload: str, n: int, fused: bool = True) -> dict:
    path, variant, _ = WORKLOADS[workload]
    return run_child(["-c", CHILD, str(ROOT / path), variant, str(n)], tree, f"{workload} at {n} requests", fused)


def previous_tree(ref: str, into: Path) -> Path | None:
    """The tree of commit `ref`, extracted with git archive (None if git or the commit is missing)."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def median_run(runs: list[dict]) -> dict:
    """The run with the median CPU time (the lower middle one of an even number)."""
    return sorted(runs, key=lambda r: r["cpu_s"])[(len(runs) - 1) // 2]


def row(label: str, n: int, r: dict) -> str:
    return (f"{label:34s} {n:>10,d} {r['wall_s']:8.2f} {n / r['wall_s']:9,.0f} {n / r['cpu_s']:9,.0f} "
            f"{r['steps'] / r['wall_s']:9,.0f} {r['rss_peak_mib']:9.0f}  {r.get('engine', 'default')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--requests", type=int, default=0, help="requests per point (default: each workload's own)")
    ap.add_argument("--against", default=PREVIOUS_RELEASE, help="git commit to compare with (default: %(default)s)")
    ap.add_argument("--no-against", action="store_true", help="time this tree only")
    ap.add_argument("--million", action="store_true", help="also 1,000,000 paged-chat requests (this tree)")
    ap.add_argument("--fleet", action="store_true", help="also a 16-replica fleet against one replica")
    ap.add_argument("--default-engine", action="store_true",
                    help="also time this tree with its fused engines off (SIMKV_FUSED=0)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per point, the two trees interleaved; the run with the median CPU time is shown")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="simkv-previous-") as tmp:
        prev = None if args.no_against else previous_tree(args.against, Path(tmp))
        if not args.no_against and prev is None:
            print(f"(no comparison: commit {args.against} is not in this clone's git history)")
        print(f"{'workload / tree':34s} {'requests':>10s} {'wall s':>8s} {'req/s':>9s} {'req/CPU s':>9s} "
              f"{'steps/s':>9s} {'peak MiB':>9s}  engine")
        for w in args.workloads.split(","):
            n = args.requests or WORKLOADS[w][2]
            runs: dict[str, list[dict]] = {"this": [], "prev": [], "default": []}
            for _ in range(args.repeat):   # interleaved, so a change in the host's load hits both trees alike
                runs["this"].append(run_point(ROOT, w, n))
                if args.default_engine:
                    runs["default"].append(run_point(ROOT, w, n, fused=False))
                if prev is not None:
                    runs["prev"].append(run_point(prev, w, n))
            this = median_run(runs["this"])
            print(row(f"{w}: this tree", n, this), flush=True)
            if args.default_engine:
                default = median_run(runs["default"])
                print(row(f"{w}: this tree, SIMKV_FUSED=0", n, default))
                if this.get("engine") == "fused":
                    print(f"{'':34s} fused {default['cpu_s'] / this['cpu_s']:.2f}x CPU time", flush=True)
            if prev is not None:
                before = median_run(runs["prev"])
                print(row(f"{w}: {args.against}", n, before))
                print(f"{'':34s} speed-up {before['wall_s'] / this['wall_s']:.2f}x wall, "
                      f"{before['cpu_s'] / this['cpu_s']:.2f}x CPU time"
                      + (f" (medians of {args.repeat} interleaved runs)" if args.repeat > 1 else ""), flush=True)
    if args.million:
        n = 1_000_000
        print(row("paged: this tree", n, run_point(ROOT, "paged", n)), flush=True)
    if args.fleet:   # vLLM V1, TGI and paged FCFS replicas, fused (from 5,000 requests)
        for per, presets in (("6000", "vllm-v1,tgi,simkv"),):
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_fleet.py"), per, "16", "round_robin",
                            "least_loaded", "--presets", presets], check=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))


if __name__ == "__main__":
    main()
