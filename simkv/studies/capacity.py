"""Capacity search: the highest arrival rate one replica sustains while meeting percentile SLOs,
found by bracketing and bisection on `workload.arrival.rate`; from it, GPUs for a target load
and the cost per million generated tokens.

A rate meets the SLO when, on every request stream searched (`seeds`: run.seed, run.seed + 1, ...),
every percentile target holds over the measured requests and the engine refused none. Requests
that no rate could serve (prompt longer than max_model_len, a reservation larger than the KV
cache, a prompt over the prefill budget, and later turns of their conversations) are left out of
the check and counted in the answer. The answer is reported as a bracket [meets, fails], checked
again at +10%. The search is bounded: it stops at `max_rate` or after `max_probes` probes and says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from simkv.errors import SimkvError
from simkv.files.scenario_file import apply_overrides, expand_variants, validate_scenario
from simkv.request import REJECT_REASONS, SESSION_ENDED
from simkv.scenario import Scenario
from simkv.metrics.summary import Summary

METRICS = ("ttft", "tbt", "e2e", "tpot", "queue")
PERCENTILES = ("p50", "p90", "p99", "max")
_SLO = re.compile(r"^(?P<metric>[a-z0-9]+)_(?P<pct>[a-z0-9]+)=(?P<value>[^=]*?)(?P<unit>ms|s)?$")
_SLO_FIX = ("metric_percentile=value[s|ms], metric in ttft/tbt/e2e/tpot/queue, percentile in p50/p90/p99/max, "
            "value a positive number, e.g. --slo ttft_p99=2s,tbt_p99=100ms")
# reasons no arrival rate can cure (simkv.request.REJECT_REASONS 1, 2, 4)
UNSERVABLE_REASONS = tuple(REJECT_REASONS[i] for i in (1, 2, 4))
SESSION_ENDED_REASON = REJECT_REASONS[SESSION_ENDED]
DEFAULT_MAX_RATE_FACTOR = 1024.0       # the search doubles the starting rate at most 10 times
DEFAULT_MAX_PROBES = 40


def parse_slo(text: str) -> dict[tuple[str, str], float]:
    """'ttft_p99=2s,tbt_p99=100ms' -> {('ttft', 'p99'): 2.0, ('tbt', 'p99'): 0.1} (seconds)."""
    out = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = _SLO.match(part)
        problem = None
        if not m:
            problem = "is not metric_percentile=value"
        elif m["metric"] not in METRICS:
            problem = f"has unknown metric '{m['metric']}'"
        elif m["pct"] not in PERCENTILES:
            problem = f"has unknown percentile '{m['pct']}'"
        else:
            try:
                value = float(m["value"])
            except ValueError:
                value = None
            if value is None or not math.isfinite(value) or value <= 0:
                problem = f"has target '{m['value']}', not a positive number of {m['unit'] or 's'}"
            elif (m["metric"], m["pct"]) in out:
                problem = "repeats a target given earlier"
        if problem:
            raise SimkvError(f"cannot read SLO '{part}': it {problem}", field="--slo", fix=_SLO_FIX)
        out[(m["metric"], m["pct"])] = value / (1000.0 if m["unit"] == "ms" else 1.0)
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
    seed: int = 0                    # run.seed of the stream this probe simulated
    refused: int = 0                 # requests the engine refused under load (count as a miss)
    unservable: dict = field(default_factory=dict)   # reason -> requests no rate could serve (left out)
    measured: int = 0                # requests whose latencies the percentiles are over
    total: int = 0                   # requests of the run


@dataclass
class CapacityResult:
    capacity_rate: float                  # highest probed rate that met every SLO on every seed (requests/s)
    failing_rate: float | None            # lowest probed rate above it that did not (None: none found)
    check_rate: float                     # capacity + 10%
    check_meets: bool                     # on every seed
    probes: list[Probe] = field(default_factory=list)
    output_tokens_per_s: float = 0.0      # at capacity (first seed)
    gpus_per_replica: int = 1
    gpus_for_target: int | None = None
    cost_per_million_tokens: float | None = None
    seeds_meeting: tuple[int, int] = (1, 1)   # (seeds whose run meets at capacity, seeds tried)
    seeds_meeting_check: tuple[int, int] = (0, 1)   # the same at +10%
    stopped: str | None = None            # why the search stopped before the bracket was tight (None: it did not)
    unservable: dict = field(default_factory=dict)   # reason -> requests left out, at capacity (first seed)
    unservable_requests: int = 0
    total_requests: int = 0               # requests of the capacity run (first seed)
    unservable_treatment: str = ("left out of the SLO check: no arrival rate can serve them; the capacity is for "
                                 "the other requests")

    @property
    def holds_on_all_seeds(self) -> bool:
        return self.seeds_meeting[0] == self.seeds_meeting[1]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["holds_on_all_seeds"] = self.holds_on_all_seeds
        out["seeds_meeting"] = {"meet": self.seeds_meeting[0], "of": self.seeds_meeting[1]}
        out["seeds_meeting_check"] = {"meet": self.seeds_meeting_check[0], "of": self.seeds_meeting_check[1]}
        for p in out["probes"]:
            p["worst"] = {k: {"value_s": v, "target_s": t} for k, (v, t) in p["worst"].items()}
        return out


def rejections(summary: Summary) -> tuple[int, dict[str, int]]:
    """(requests the engine refused under load, {reason: requests no rate could serve}) of a summary.
    Reads both summary layouts: unservable requests under requests.unservable, or among
    requests.rejected_by_reason. Turns of a conversation that ended early are unservable when
    nothing was refused (an unservable turn ended it); otherwise the run misses anyway."""
    req = summary["requests"]
    by_reason = dict(req.get("rejected_by_reason") or {})
    unservable = {k: int(v) for k, v in (req.get("unservable") or {}).items() if v}
    for reason in UNSERVABLE_REASONS:
        if by_reason.get(reason):
            unservable[reason] = max(unservable.get(reason, 0), int(by_reason[reason]))
    # refused under load, and any reason not known to be unservable: a miss
    refused = sum(int(v) for k, v in by_reason.items() if k not in UNSERVABLE_REASONS and k != SESSION_ENDED_REASON)
    ended = int(by_reason.get(SESSION_ENDED_REASON, 0))
    if ended:
        if refused:
            refused += ended
        elif unservable:
            unservable[f"{SESSION_ENDED_REASON}: after an unservable turn"] = ended
        else:
            refused += ended
    return refused, unservable


def _meets(summary: Summary, slo: dict) -> tuple[bool, dict]:
    detail, ok = {}, True
    for (metric, pct), target in slo.items():
        value = summary["latency_s"][metric][pct]
        detail[f"{metric}_{pct}"] = (value, target)
        ok &= value is not None and value <= target
    refused, _ = rejections(summary)
    return ok and refused == 0, detail


def check_variant(scenario: Scenario, variant: str | None, field_name: str = "--variant") -> str | None:
    """`variant` if the scenario has it (None: the first); else an error naming the known ones."""
    names = [name for name, _ in expand_variants(scenario)]
    if variant is not None and variant not in names:
        raise SimkvError(f"no variant '{variant}' in the scenario", field=field_name,
                         fix=f"one of: {', '.join(names)}" + ("" if scenario.variants else " (the scenario has no variants)"))
    return variant


def check_number(value, name: str, *, low: float = 0.0, allow_low: bool = False, high: float | None = None,
                 what: str = "a positive number") -> None:
    """A command-line number in range, or the standard error (NaN and infinities included)."""
    if value is None:
        return
    bad = not math.isfinite(value) or value < low or (value == low and not allow_low) or (high is not None and value >= high)
    if bad:
        raise SimkvError(f"{value!r} is out of range", field=name, fix=f"give {what}")


def find_capacity(scenario: Scenario, slo: dict, *, simulate_fn, variant: str | None = None,
                  tolerance: float = 0.02, target_rate: float | None = None,
                  price_per_gpu_hour: float | None = None, max_probes: int = DEFAULT_MAX_PROBES, seeds: int = 1,
                  max_rate: float | None = None) -> CapacityResult:
    """Bracket and bisect the arrival rate; `simulate_fn(scenario, variant)` returns a Result.
    A rate meets when it meets on every one of `seeds` request streams (run.seed, run.seed + 1, ...;
    the first stream that misses settles it). The search doubles up to `max_rate` (default 1024 x
    the starting rate) and runs at most `max_probes` rate probes; either limit stops it with
    `stopped` saying why."""
    if scenario.workload.arrival is None or not hasattr(scenario.workload.arrival, "rate"):
        raise SimkvError("capacity search steps workload.arrival.rate", field="workload.arrival",
                         fix="use a poisson, gamma or spike arrival process")
    check_variant(scenario, variant)
    check_number(tolerance, "--tolerance", high=1.0, what="a fraction between 0 and 1, e.g. 0.02")
    check_number(target_rate, "--target-rate", what="a positive rate in requests/s")
    check_number(price_per_gpu_hour, "--price", allow_low=True, what="a price of zero or more $ per GPU-hour")
    if seeds < 1:
        raise SimkvError(f"{seeds} seeds", field="--seeds", fix="give 1 or more request streams (default 3)")
    if max_probes < 2:
        raise SimkvError(f"{max_probes} probes", field="--max-probes", fix="give at least 2")
    start = float(scenario.workload.arrival.rate)
    max_rate = start * DEFAULT_MAX_RATE_FACTOR if max_rate is None else max_rate
    check_number(max_rate, "--max-rate", what="a positive rate in requests/s")
    if max_rate < start:
        raise SimkvError(f"--max-rate {max_rate:g} is below the scenario's starting rate {start:g}", field="--max-rate",
                         fix="raise --max-rate or lower workload.arrival.rate")
    base = scenario.model_dump(exclude_unset=True)
    probes: list[Probe] = []
    done: dict[tuple[float, int], Probe] = {}

    def run(rate: float, k: int) -> Probe:
        if (rate, k) not in done:
            changes = {"workload.arrival.rate": rate}
            if k:
                changes["run.seed"] = scenario.run.seed + k
            sc = validate_scenario(apply_overrides(base, changes, origin="capacity"), "capacity")
            s = simulate_fn(sc, variant).summary
            refused, unservable = rejections(s)
            if s["requests"]["measured"] == 0 and unservable:
                raise SimkvError(f"no request of the run can be served ({_describe(unservable)})", field="workload",
                                 fix="raise engine.max_model_len (or the KV cache), shorten the prompts, or set "
                                     "workload.overlong: clip")
            ok, detail = _meets(s, slo)
            done[(rate, k)] = Probe(rate, ok, detail, s["throughput"]["output_tokens_per_s"],
                                    s["throughput"]["requests_per_s"], scenario.run.seed + k, refused, unservable,
                                    s["requests"]["measured"], s["requests"]["total"])
        return done[(rate, k)]

    def probe(rate: float) -> Probe:
        """The rate on every seed, stopping at the first that misses: that seed's probe (meets false),
        or the first seed's when every seed met."""
        first = run(rate, 0)
        missed = next((r for r in (run(rate, k) for k in range(seeds)) if not r.meets), None)
        p = missed or first             # a miss is reported with the stream that missed
        probes.append(p)
        return p

    lo_p = hi_p = None
    stopped = None
    p = probe(start)
    while True:  # bracket: a rate that meets and one that does not
        if p.meets:
            lo_p = p
            if hi_p is not None:
                break
            if p.rate >= max_rate:
                stopped = (f"max rate reached: the SLO still holds at {p.rate:g} req/s, the search's limit "
                           f"(--max-rate); the capacity is at least this")
                break
            if len(probes) >= max_probes:
                stopped = f"max probes ({max_probes}) reached before a rate missed the SLO; the capacity is at least this"
                break
            p = probe(min(p.rate * 2, max_rate))
        else:
            hi_p = p
            if lo_p is not None:
                break
            if p.rate / 2 < 1e-3 or len(probes) >= max_probes:
                raise SimkvError(f"even {p.rate:g} req/s misses the SLO" + _why(p), field="--slo",
                                 fix="loosen the targets, or check the scenario (e.g. engine limits)")
            p = probe(p.rate / 2)
    while hi_p is not None and (hi_p.rate - lo_p.rate) / lo_p.rate > tolerance:
        if len(probes) >= max_probes:
            stopped = (f"max probes ({max_probes}) reached with the bracket [{lo_p.rate:g}, {hi_p.rate:g}] req/s "
                       f"wider than --tolerance {tolerance:g}")
            break
        p = probe((lo_p.rate + hi_p.rate) / 2)
        lo_p, hi_p = (p, hi_p) if p.meets else (lo_p, p)
    check_rate = lo_p.rate * 1.1
    check_first = run(check_rate, 0)
    check_seeds = [run(check_rate, k).meets for k in range(1, seeds)]
    gpus = scenario.hardware.tensor_parallel
    res = CapacityResult(lo_p.rate, hi_p.rate if hi_p else None, check_rate, check_first.meets and all(check_seeds),
                         probes, lo_p.output_tokens_per_s, gpus, stopped=stopped)
    res.seeds_meeting = (sum(run(lo_p.rate, k).meets for k in range(seeds)), seeds)
    res.seeds_meeting_check = (int(check_first.meets) + sum(check_seeds), seeds)
    res.unservable = dict(lo_p.unservable)
    res.unservable_requests = sum(lo_p.unservable.values())
    res.total_requests = lo_p.total
    if target_rate is not None:
        res.gpus_for_target = gpus * math.ceil(target_rate / lo_p.rate)
    if price_per_gpu_hour is not None and lo_p.output_tokens_per_s > 0:
        res.cost_per_million_tokens = price_per_gpu_hour * gpus / (lo_p.output_tokens_per_s * 3600) * 1e6
    return res


def _describe(unservable: dict) -> str:
    return "; ".join(f"{n} {reason}" for reason, n in unservable.items())


def _why(p: Probe) -> str:
    parts = [f"{k} {v:.3g} s > {t:.3g} s" for k, (v, t) in p.worst.items() if v is not None and v > t]
    parts += [f"{k}: no value" for k, (v, t) in p.worst.items() if v is None]
    if p.refused:
        parts.append(f"{p.refused} request(s) refused by the engine")
    return f" ({'; '.join(parts)})" if parts else ""
