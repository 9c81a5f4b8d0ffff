"""Fleet capacity: the fewest replicas per pool that meet percentile SLOs at a target load, and its price.

The load is fixed (a target arrival rate, or a target of tokens per day turned into a rate with the
stream's mean prompt + output tokens per request); the replica counts move. Starting from the
scenario's counts, every pool is doubled together until the fleet meets the SLO (or the search gives
up at `max_replicas` per pool); then each pool in turn is bisected down to the fewest replicas that
still meet with the other pools held, and the passes repeat until no count changes. The answer is
minimal pool by pool: with one replica fewer in any pool (of more than one) the fleet misses, and the
answer says so for each pool (`one_fewer`). For a hybrid fleet the counts per pool are the pool mix.
It is not a search over every mix: two pools that serve the same classes could trade replicas.

"Meets" is simkv.studies.capacity's rule: every percentile target holds over the fleet's measured
requests on every seed searched, and no request was refused (a failed replica counts as refused).

Price: $/GPU-hour per GPU type (`fleet.prices`, or --price), the fleet's $/hour and $/month
(730 hours), and $ per million input and per million output tokens at the target load: the fleet's
cost per hour divided over the tokens it serves in an hour, a prompt token weighing `input_weight`
generated tokens (default 1: every token processed carries the same price).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from simkv.errors import SimkvError
from simkv.files.scenario_file import apply_overrides, expand_variants, pool_scenarios, validate_scenario
from simkv.scenario import Scenario
from simkv.studies.capacity import _meets, rejections

HOURS_PER_MONTH = 730.0     # 8,760 hours a year / 12
SECONDS_PER_DAY = 86_400.0
DEFAULT_MAX_REPLICAS = 256


@dataclass
class FleetProbe:
    replicas: dict                   # pool -> replicas
    meets: bool
    worst: dict                      # metric_percentile -> (value, target), of the stream that settled it
    seed: int = 0
    refused: int = 0


@dataclass
class FleetCapacityResult:
    target_rate: float                       # requests/s the fleet is sized for
    replicas: dict                           # pool -> fewest replicas that meet (with the others held)
    gpus: dict                               # pool -> GPUs (replicas x tensor parallel)
    gpu_types: dict                          # pool -> GPU type name
    total_gpus: int
    one_fewer: dict                          # pool -> meets with one replica fewer? (None: the pool has 1)
    meets: bool                              # the answer meets on every seed
    input_tokens_per_s: float                # the target load's prompt tokens/s
    output_tokens_per_s: float               # the target load's generated tokens/s
    mean_prompt_tokens: float
    mean_output_tokens: float
    seeds: int = 1
    target_tokens_per_day: float | None = None
    worst: dict = field(default_factory=dict)     # at the answer (first seed)
    probes: list[FleetProbe] = field(default_factory=list)
    price: dict | None = None                # see price_fleet
    stopped: str | None = None

    @property
    def minimal(self) -> bool:
        return self.meets and not any(self.one_fewer.values())

    def to_dict(self) -> dict:
        out = asdict(self)
        out["minimal"] = self.minimal
        for p in [out] + out["probes"]:
            p["worst"] = {k: {"value_s": v, "target_s": t} for k, (v, t) in p["worst"].items()}
        return out


def parse_prices(text: str | None) -> dict[str, float] | float | None:
    """'2.5' -> 2.5 (every GPU type); 'h100=2.5,h200=3.4' -> {'h100': 2.5, 'h200': 3.4}."""
    if text is None:
        return None
    fix = "give $ per GPU-hour: one number for every GPU type (--price 2.5) or per type (--price h100=2.5,h200=3.4)"
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise SimkvError("no price given", field="--price", fix=fix)
    if len(parts) == 1 and "=" not in parts[0]:
        return _price_value(parts[0], fix)
    out: dict[str, float] = {}
    for part in parts:
        name, eq, value = part.partition("=")
        if not eq or not name.strip():
            raise SimkvError(f"cannot read price '{part}'", field="--price", fix=fix)
        out[name.strip()] = _price_value(value, fix)
    return out


def _price_value(text: str, fix: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise SimkvError(f"price '{text.strip()}' is not zero or more $ per GPU-hour", field="--price", fix=fix)
    return value


def _gpu_name(sc: Scenario) -> str:
    gpu = sc.hardware.gpu
    return gpu if isinstance(gpu, str) else str(getattr(gpu, "name", "custom"))


def _scale_load(raw: dict, scenario: Scenario, rate: float) -> None:
    """Set the scenario's arrival rate to `rate` (with classes: every class's rate scaled alike)."""
    w = scenario.workload
    if w.classes:
        rates = [getattr(c.arrival, "rate", None) for c in w.classes]
        if any(r is None for r in rates) or sum(rates) <= 0:
            raise SimkvError("fleet capacity scales every class's arrival.rate", field="workload.classes",
                             fix="give every class a poisson, gamma or spike arrival with a rate")
        factor = rate / sum(rates)
        for c, r in zip(raw["workload"]["classes"], rates):
            c.setdefault("arrival", {})["rate"] = r * factor
    else:
        if w.arrival is None or not hasattr(w.arrival, "rate"):
            raise SimkvError("fleet capacity sets workload.arrival.rate", field="workload.arrival",
                             fix="use a poisson, gamma or spike arrival process")
        raw["workload"].setdefault("arrival", {})["rate"] = rate


def offered_rate(scenario: Scenario) -> float:
    w = scenario.workload
    if w.classes:
        return float(sum(getattr(c.arrival, "rate", 0.0) or 0.0 for c in w.classes))
    return float(getattr(w.arrival, "rate", 0.0) or 0.0)


def find_fleet_capacity(scenario: Scenario, slo: dict, *, simulate_fn, stream_fn, variant: str | None = None,
                        target_rate: float | None = None, tokens_per_day: float | None = None,
                        prices: dict[str, float] | float | None = None, input_weight: float = 1.0,
                        seeds: int = 1, max_replicas: int = DEFAULT_MAX_REPLICAS,
                        max_probes: int = 60) -> FleetCapacityResult:
    """Size the fleet of `scenario` (its variant `variant`) for the target load.
    `simulate_fn(scenario)` returns a Result of a scenario without variants; `stream_fn(scenario)` its
    request stream (for the mean tokens per request)."""
    if scenario.fleet is None:
        raise SimkvError("the scenario has no fleet: section", field="fleet",
                         fix="add fleet.pools, or size one replica without --tokens-per-day")
    if (target_rate is None) == (tokens_per_day is None):
        raise SimkvError("fleet capacity needs one target load", field="--target-rate",
                         fix="give --target-rate (requests/s) or --tokens-per-day (prompt + output tokens), not both")
    for value, name in ((target_rate, "--target-rate"), (tokens_per_day, "--tokens-per-day")):
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise SimkvError(f"{value!r} is out of range", field=name, fix="give a positive number")
    if not math.isfinite(input_weight) or input_weight < 0:
        raise SimkvError(f"{input_weight!r} is out of range", field="--input-weight",
                         fix="give zero or more: what one prompt token costs in generated tokens (default 1)")
    if seeds < 1:
        raise SimkvError(f"{seeds} seeds", field="--seeds", fix="give 1 or more request streams")
    sub = _variant(scenario, variant)
    assert sub.fleet is not None
    stream = stream_fn(sub)
    mean_in = float(np.mean(stream.prompt_tokens)) if len(stream.prompt_tokens) else 0.0
    mean_out = float(np.mean(stream.output_tokens)) if len(stream.output_tokens) else 0.0
    if tokens_per_day is not None:
        target_rate = tokens_per_day / SECONDS_PER_DAY / (mean_in + mean_out)
    assert target_rate is not None
    pools = [p.name for p in sub.fleet.pools]
    derived = dict(pool_scenarios(sub))
    gpu_types = {n: _gpu_name(derived[n]) for n in pools}
    tp = {n: derived[n].hardware.tensor_parallel for n in pools}
    price_per = _resolve_prices(prices if prices is not None else (sub.fleet.prices or None), gpu_types)
    base = sub.model_dump(exclude_unset=True, exclude={"variants"})
    _scale_load(base, sub, target_rate)
    done: dict[tuple, FleetProbe] = {}
    probes: list[FleetProbe] = []

    def run(counts: dict, k: int) -> FleetProbe:
        key = (tuple(counts[n] for n in pools), k)
        if key not in done:
            if len(done) >= max_probes:
                raise SimkvError(f"the fleet search ran {max_probes} simulations without an answer", field="--max-probes",
                                 fix="raise --max-probes, or start the pools' replicas nearer the answer")
            raw = {**base, "fleet": {**base["fleet"], "pools": [dict(p, replicas=counts[p["name"]])
                                                              for p in base["fleet"]["pools"]]}}
            if k:
                raw["run"] = {**raw.get("run", {}), "seed": sub.run.seed + k}
            sc = validate_scenario(apply_overrides(raw, {}, origin="fleet capacity"), "fleet capacity")
            s = simulate_fn(sc).summary
            ok, detail = _meets(s, slo)
            done[key] = FleetProbe(dict(counts), ok, detail, sub.run.seed + k, rejections(s)[0])
        return done[key]

    def meets(counts: dict) -> bool:
        first = run(counts, 0)
        missed = next((p for p in (run(counts, k) for k in range(seeds)) if not p.meets), None)
        p = missed or first
        if all(q is not p for q in probes):   # each simulated fleet listed once
            probes.append(p)
        return missed is None

    counts = {p.name: p.replicas for p in sub.fleet.pools}
    stopped = None
    while not meets(counts):   # grow every pool until the fleet meets
        if all(c >= max_replicas for c in counts.values()):
            raise SimkvError(f"even {max_replicas} replicas per pool miss the SLO at {target_rate:g} req/s",
                             field="--slo", fix="loosen the targets, lower the load, or raise --max-replicas")
        counts = {n: min(2 * c, max_replicas) for n, c in counts.items()}
    for _ in range(4):   # shrink pool by pool, the others held
        before = dict(counts)
        for n in pools:
            lo, hi = 0, counts[n]          # lo misses (0: no pool), hi meets
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if meets({**counts, n: mid}):
                    hi = mid
                else:
                    lo = mid
            counts[n] = hi
        if counts == before:
            break
    else:
        stopped = "the pool-by-pool passes did not settle in 4 rounds; the counts meet but may not be minimal"
    one_fewer = {n: (meets({**counts, n: counts[n] - 1}) if counts[n] > 1 else None) for n in pools}
    answer = run(counts, 0)
    rate = target_rate
    res = FleetCapacityResult(
        target_rate=rate, replicas=dict(counts), gpus={n: counts[n] * tp[n] for n in pools}, gpu_types=gpu_types,
        total_gpus=sum(counts[n] * tp[n] for n in pools), one_fewer=one_fewer, meets=meets(counts),
        input_tokens_per_s=rate * mean_in, output_tokens_per_s=rate * mean_out, mean_prompt_tokens=mean_in,
        mean_output_tokens=mean_out, seeds=seeds, target_tokens_per_day=tokens_per_day, worst=answer.worst,
        probes=probes, stopped=stopped)
    if price_per is not None:
        res.price = price_fleet(res.gpus, gpu_types, price_per, res.input_tokens_per_s, res.output_tokens_per_s,
                                input_weight)
    return res


def _variant(scenario: Scenario, variant: str | None) -> Scenario:
    runs = list(expand_variants(scenario))
    names = [n for n, _ in runs]
    if variant is None:
        return runs[0][1]
    if variant not in names:
        raise SimkvError(f"no variant '{variant}' in the scenario", field="--variant", fix=f"one of: {', '.join(names)}")
    return dict(runs)[variant]


def _resolve_prices(prices, gpu_types: dict) -> dict[str, float] | None:
    """{GPU type: $/GPU-hour} for every GPU type the fleet uses, or None without prices."""
    if prices is None:
        return None
    types = sorted(set(gpu_types.values()))
    if isinstance(prices, (int, float)):
        return {g: float(prices) for g in types}
    missing = [g for g in types if g not in prices]
    if missing:
        raise SimkvError(f"no price for GPU type {', '.join(missing)}", field="--price",
                         fix=f"give $ per GPU-hour for every GPU type the fleet uses ({', '.join(types)}), e.g. "
                             f"--price {','.join(f'{g}=2.5' for g in types)} (or fleet.prices in the scenario)")
    return {g: float(prices[g]) for g in types}


def price_fleet(gpus: dict, gpu_types: dict, price_per: dict, input_tps: float, output_tps: float,
                input_weight: float = 1.0) -> dict:
    """The fleet's price: $/hour and $/month from its GPUs, and $ per million input and output tokens
    at the served load (a prompt token weighs `input_weight` generated tokens)."""
    per_hour = sum(n * price_per[gpu_types[p]] for p, n in gpus.items())
    weighted = input_weight * input_tps + output_tps     # weighted tokens per second
    per_million = per_hour / (weighted * 3600.0) * 1e6 if weighted > 0 else None
    return {"usd_per_gpu_hour": dict(price_per), "usd_per_hour": per_hour, "usd_per_month": per_hour * HOURS_PER_MONTH,
            "hours_per_month": HOURS_PER_MONTH, "input_weight": input_weight,
            "usd_per_million_input_tokens": None if per_million is None else input_weight * per_million,
            "usd_per_million_output_tokens": per_million,
            "usd_per_million_output_tokens_all_cost": (per_hour / (output_tps * 3600.0) * 1e6 if output_tps > 0 else None),
            "rule": "the fleet's $/hour over the tokens it serves in an hour at the target load; a prompt token "
                    "weighs input_weight generated tokens; *_all_cost: every dollar on generated tokens"}
