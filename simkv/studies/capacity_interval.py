"""The range of arrival rates a replica's capacity answer could take: the capacity search
(simkv.studies.capacity) repeated on N replicates, each with its own request stream (run.seed + i)
and its step costs multiplied by one error factor per step kind (decode, prefill, mixed) drawn
from the cost model's held-out errors (simkv.studies.intervals), fixed for the whole replicate
(a cost-model error is systematic, not per step).

The all-seeds answer of `simkv capacity` is the rate that held on every stream searched; this
interval says how far the capacity itself moves when the request stream and the step-time model
vary within what was measured: [p5, p95] (and the full list) of the replicates' capacities.
"""

from __future__ import annotations

import numpy as np

from simkv.files.scenario_file import apply_overrides, expand_variants, validate_scenario
from simkv.studies.capacity import find_capacity
from simkv.studies.intervals import KINDS, ScaledCost, residuals_for


def capacity_interval(scenario, slo: dict, n: int, *, variant: str | None, stream_for, build, run_simulation,
                      tolerance: float = 0.02, max_probes: int = 40, max_rate: float | None = None,
                      progress=None) -> dict:
    """{replicates, capacities (req/s), p5, p50, p95, min, max, residuals, method} over `n`
    replicates. The run driver lends `stream_for`, `build(scenario, stream)` and
    `run_simulation(sim, name)`, so every probe is simulated exactly as `simkv run` would."""
    names = dict(expand_variants(scenario))
    name = variant or next(iter(names))
    first = build(names[name], stream_for(names[name]))
    residuals, what = residuals_for(first)
    rng = np.random.default_rng(np.random.SeedSequence([scenario.run.seed, 17, n]))
    base = scenario.model_dump(exclude_unset=True)
    capacities, factors_all, stops = [], [], []
    for i in range(1, n + 1):
        factors = {k: (float(rng.choice(residuals[k])) if residuals is not None and len(residuals[k]) else 1.0)
                   for k in KINDS}
        replicate = validate_scenario(apply_overrides(base, {"run.seed": scenario.run.seed + i},
                                                      origin="capacity interval"), "capacity interval")

        def simulate_fn(sc, v, factors=factors):
            sub = dict(expand_variants(sc))[v or name]
            sim = build(sub, stream_for(sub))
            sim.cost = ScaledCost(sim.cost, factors)
            return run_simulation(sim, v or name)

        res = find_capacity(replicate, slo, simulate_fn=simulate_fn, variant=variant, tolerance=tolerance,
                            seeds=1, max_rate=max_rate, max_probes=max_probes)
        capacities.append(res.capacity_rate)
        factors_all.append(factors)
        if res.stopped:
            stops.append(f"replicate {i}: {res.stopped}")
        if progress is not None:
            progress(i, n)
    caps = np.asarray(capacities, dtype=float)
    return {"replicates": n, "capacities_req_s": capacities,
            "p5": float(np.percentile(caps, 5)), "p50": float(np.percentile(caps, 50)),
            "p95": float(np.percentile(caps, 95)), "min": float(caps.min()), "max": float(caps.max()),
            "residuals": what, "factors": factors_all, "stopped": stops,
            "method": "capacity searched on each replicate alone (its own seed, run.seed + i), with step costs "
                      "multiplied by one resampled held-out error factor per step kind"}
