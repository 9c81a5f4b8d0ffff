"""Capacity search: the highest arrival rate one replica sustains while meeting percentile SLOs,
found by bracketing and bisection on `workload.arrival.rate`; from it, GPUs for a target load
and the cost per million generated tokens.

Every probe simulates the scenario (one variant) on its own seeded stream; latency percentiles
are noisy, so the answer is reported as a bracket [meets, fails], checked again at +10%.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from simkv.errors import SimkvError
from simkv.loading import apply_overrides, validate_scenario
from simkv.scenario import Scenario

METRICS = ("ttft", "tbt", "e2e", "tpot", "queue")
_SLO = re.compile(r"^(ttft|tbt|e2e|tpot|queue)_(p50|p90|p99|max)=([0-9.]+)(ms|s)?$")


def parse_slo(text: str) -> dict[tuple[str, str], float]:
    """'ttft_p99=2s,tbt_p99=100ms' -> {('ttft', 'p99'): 2.0, ('tbt', 'p99'): 0.1} (seconds)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = _SLO.match(part)
        if not m:
            raise SimkvError(f"cannot read SLO '{part}'", field="--slo",
                             fix="metric_percentile=value[s|ms], metric in ttft/tbt/e2e/tpot/queue, "
                                 "percentile in p50/p90/p99/max, e.g. ttft_p99=2s,tbt_p99=100ms")
        metric, pct, value, unit = m.groups()
        out[(metric, pct)] = float(value) / (1000.0 if unit == "ms" else 1.0)
    if not out:
        raise SimkvError("no SLO given", field="--slo", fix="e.g. --slo ttft_p99=2s,tbt_p99=100ms")
    return out


@dataclass
class Probe:
    rate: float
    meets: bool
    worst: dict                      # metric_percentile -> (value, target)
    output_tokens_per_s: float
    requests_per_s: float


@dataclass
class CapacityResult:
    capacity_rate: float                  # highest probed rate that met every SLO (requests/s)
    failing_rate: float                   # lowest probed rate above it that did not
    check_rate: float                     # capacity + 10%
    check_meets: bool
    probes: list[Probe] = field(default_factory=list)
    output_tokens_per_s: float = 0.0      # at capacity
    gpus_per_replica: int = 1
    gpus_for_target: int | None = None
    cost_per_million_tokens: float | None = None
    seeds_meeting: tuple[int, int] = (1, 1)   # (seeds whose run meets at capacity, seeds tried)
    seeds_meeting_check: tuple[int, int] = (0, 1)   # the same at +10%


def _meets(summary: dict, slo: dict) -> tuple[bool, dict]:
    detail, ok = {}, True
    for (metric, pct), target in slo.items():
        value = summary["latency_s"][metric][pct]
        detail[f"{metric}_{pct}"] = (value, target)
        ok &= value is not None and value <= target
    return ok and summary["requests"]["rejected"] == 0, detail


def find_capacity(scenario: Scenario, slo: dict, *, simulate_fn, variant: str | None = None,
                  tolerance: float = 0.02, target_rate: float | None = None,
                  price_per_gpu_hour: float | None = None, max_probes: int = 40, seeds: int = 1) -> CapacityResult:
    """Bracket and bisect the arrival rate; `simulate_fn(scenario, variant)` returns a Result.
    With seeds > 1 the capacity and +10% rates are re-simulated on seeds-1 other request streams
    (run.seed + 1, ...): how many meet is the confidence of the answer."""
    if scenario.workload.arrival is None or not hasattr(scenario.workload.arrival, "rate"):
        raise SimkvError("capacity search steps workload.arrival.rate", field="workload.arrival",
                         fix="use a poisson, gamma or spike arrival process")
    base = scenario.model_dump(exclude_unset=True)
    probes: list[Probe] = []

    def probe(rate: float, seed_offset: int = 0) -> Probe:
        changes = {"workload.arrival.rate": rate}
        if seed_offset:
            changes["run.seed"] = scenario.run.seed + seed_offset
        sc = validate_scenario(apply_overrides(base, changes, origin="capacity"), "capacity")
        s = simulate_fn(sc, variant).summary
        ok, detail = _meets(s, slo)
        p = Probe(rate, ok, detail, s["throughput"]["output_tokens_per_s"], s["throughput"]["requests_per_s"])
        if not seed_offset:
            probes.append(p)
        return p

    lo_p = hi_p = None
    p = probe(scenario.workload.arrival.rate)
    while len(probes) < max_probes:  # bracket: a rate that meets and one that does not
        if p.meets:
            lo_p = p
            if hi_p is not None:
                break
            p = probe(p.rate * 2)
        else:
            hi_p = p
            if lo_p is not None:
                break
            p = probe(p.rate / 2)
            if p.rate < 1e-3:
                raise SimkvError("even a tiny load misses the SLO", field="--slo", fix="loosen the targets")
    while lo_p and hi_p and (hi_p.rate - lo_p.rate) / lo_p.rate > tolerance and len(probes) < max_probes:
        p = probe((lo_p.rate + hi_p.rate) / 2)
        lo_p, hi_p = (p, hi_p) if p.meets else (lo_p, p)
    if lo_p is None or hi_p is None:
        raise SimkvError("could not bracket the capacity", field="--slo", fix="check the SLO and the scenario")
    check = probe(lo_p.rate * 1.1)
    gpus = scenario.hardware.tensor_parallel
    res = CapacityResult(lo_p.rate, hi_p.rate, check.rate, check.meets, probes, lo_p.output_tokens_per_s, gpus)
    others = range(1, max(seeds, 1))
    res.seeds_meeting = (1 + sum(probe(lo_p.rate, k).meets for k in others), max(seeds, 1))
    res.seeds_meeting_check = (int(check.meets) + sum(probe(check.rate, k).meets for k in others), max(seeds, 1))
    if target_rate is not None:
        res.gpus_for_target = gpus * math.ceil(target_rate / lo_p.rate)
    if price_per_gpu_hour is not None and lo_p.output_tokens_per_s > 0:
        res.cost_per_million_tokens = price_per_gpu_hour * gpus / (lo_p.output_tokens_per_s * 3600) * 1e6
    return res
