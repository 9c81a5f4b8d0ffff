"""Arrival processes.

Models: Poisson (exponential gaps); Gamma gaps with a chosen coefficient of variation; on/off
bursts (Poisson during exponential on-periods, silence during exponential off-periods); a
time-varying Poisson rate given at knots (step or linear, optionally periodic: diurnal curves);
a load spike (the rate times a factor over an interval). Time-varying rates are sampled exactly
by thinning a Poisson process at the peak rate.

Bounded work: `check_reachable` refuses, before anything is sampled, a process that cannot
reach `run.num_requests` (a curve that ends at rate 0, a tiny long-run rate) or that would need
more than MAX_CANDIDATES thinning candidates or MAX_CYCLES on/off periods; the samplers stop
with the same kind of error if they still run past those bounds (or past HORIZON_S).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from simkv.errors import SimkvError
from simkv.specs import MAX_REQUESTS

if TYPE_CHECKING:  # the schema is an input, read by its `process` discriminator
    from simkv.scenario import GammaArrivals, PiecewiseArrivals, PoissonArrivals

HORIZON_S = 1e9            # ~32 years of simulated arrivals
MAX_CANDIDATES = 200_000_000   # thinning candidates (a few seconds of sampling)
MAX_CYCLES = 2_000_000     # on/off periods


def long_run_rate(spec) -> float:
    """Mean arrivals per second over a long time (requests/s)."""
    if spec.process in ("poisson", "gamma"):
        return spec.rate
    if spec.process == "onoff":
        return spec.rate_on * spec.on_s / (spec.on_s + spec.off_s)
    if spec.process == "spike":
        return spec.rate
    if spec.period_s is None:
        return float(spec.rates[-1])
    return _piecewise_integral(spec, spec.period_s) / spec.period_s


def _piecewise_integral(spec: PiecewiseArrivals, until: float) -> float:
    """Expected arrivals in [0, until], for until at most the period (or the last knot)."""
    xs = np.asarray([x for x in spec.times_s if x < until] + [until], dtype=np.float64)
    widths = np.diff(xs)
    if spec.interpolate == "step":
        return float(np.sum(rate_at(spec, xs[:-1]) * widths))
    ys = rate_at(spec, xs)
    return float(np.sum((ys[1:] + ys[:-1]) / 2 * widths))


def _time_to_reach(spec, n: int, mean: float) -> float:
    """About when the n-th request arrives (s): n / long-run rate, with a spike's dip or burst."""
    if spec.process == "spike":
        before, inside = spec.rate * spec.start_s, spec.rate * spec.factor * spec.duration_s
        if n <= before:
            return n / spec.rate
        if n <= before + inside:
            return spec.start_s + (n - before) / (spec.rate * spec.factor)
        return spec.start_s + spec.duration_s + (n - before - inside) / spec.rate
    return n / mean if mean > 0 else float("inf")


def check_reachable(spec, *, num_requests: int | None, duration_s: float | None, field: str = "workload.arrival") -> None:
    """Raise SimkvError if generating the arrivals could not finish in bounded work.

    Raises:
        SimkvError: naming the field and saying why generation would not stop.
    """
    mean, peak = long_run_rate(spec), _peak(spec)
    if duration_s is not None:
        expected = mean * duration_s
        if spec.process == "spike":
            expected += spec.rate * (spec.factor - 1) * max(0.0, min(spec.duration_s, duration_s - spec.start_s))
        if expected > MAX_REQUESTS:
            raise SimkvError(f"about {expected:.3g} requests arrive in run.duration_s={duration_s:g} s, more than "
                             f"{MAX_REQUESTS:,}", field=field, fix="lower the rate or run.duration_s")
        horizon = duration_s
    else:
        if spec.process == "piecewise" and spec.period_s is None and spec.rates[-1] == 0:
            total = _piecewise_integral(spec, spec.times_s[-1])
            if total - 5 * total ** 0.5 < num_requests:   # Poisson count: 5 sigma below its mean
                raise SimkvError(f"the rate is 0 after the last knot ({spec.times_s[-1]:g} s), so only about "
                                 f"{total:.3g} requests ever arrive, not surely run.num_requests={num_requests}",
                                 field=f"{field}.rates", fix="end the curve on a positive rate, set period_s to "
                                 "repeat it, or give run.duration_s instead of num_requests")
            horizon = spec.times_s[-1]
        else:
            horizon = _time_to_reach(spec, num_requests, mean)
            if horizon > HORIZON_S:
                raise SimkvError(f"at a long-run rate of {mean:.3g} requests/s, {num_requests} requests take about "
                                 f"{horizon:.3g} s to arrive (more than {HORIZON_S:.0e} s)", field=field,
                                 fix="raise the rate (or the on-period share), or ask for fewer requests")
    if spec.process in ("onoff", "piecewise", "spike"):
        if spec.process == "onoff":
            cycles = horizon / (spec.on_s + spec.off_s)
            if cycles > MAX_CYCLES:
                raise SimkvError(f"about {cycles:.3g} on/off periods are needed (more than {MAX_CYCLES:,})", field=field,
                                 fix="use longer on_s/off_s periods, or fewer requests")
        elif peak * horizon > MAX_CANDIDATES:
            raise SimkvError(f"sampling needs about {peak * horizon:.3g} candidate arrivals at the peak rate "
                             f"{peak:.3g} requests/s (more than {MAX_CANDIDATES:,}): the peak is too far above the "
                             f"mean rate {mean:.3g}", field=field,
                             fix="lower the peak (spike factor, largest rate) or ask for fewer requests")


def sample_gaps(spec: PoissonArrivals | GammaArrivals, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` inter-arrival gaps in seconds, mean 1/rate."""
    mean = 1.0 / spec.rate
    if spec.process == "poisson":
        return rng.exponential(mean, n)
    shape = 1.0 / spec.cv ** 2
    return rng.gamma(shape, mean / shape, n)


def rate_at(spec, t: np.ndarray) -> np.ndarray:
    """The instantaneous rate (requests/s) of a time-varying process at times t."""
    if spec.process == "spike":
        inside = (t >= spec.start_s) & (t < spec.start_s + spec.duration_s)
        return np.where(inside, spec.rate * spec.factor, spec.rate)
    knots, rates = np.asarray(spec.times_s), np.asarray(spec.rates)
    x = np.mod(t, spec.period_s) if spec.period_s else t
    if spec.interpolate == "linear":
        if spec.period_s:  # wrap to the first knot at the end of the period
            knots, rates = np.append(knots, spec.period_s), np.append(rates, rates[0])
        return np.interp(x, knots, rates)
    return rates[np.searchsorted(knots, x, side="right") - 1]


def _peak(spec) -> float:
    if spec.process in ("poisson", "gamma"):
        return spec.rate
    if spec.process == "onoff":
        return spec.rate_on
    return peak_rate(spec)


def peak_rate(spec) -> float:
    if spec.process == "spike":
        return spec.rate * max(1.0, spec.factor)
    return float(max(spec.rates))


def _varying_times(spec, rng, until: float | None, count: int | None) -> np.ndarray:
    """Arrival times of a time-varying or bursty process, up to `until` or `count` arrivals."""
    out, t, total, rounds, candidates = [], 0.0, 0, 0, 0
    stop = None if until is not None or spec.process != "piecewise" or spec.period_s else (
        spec.times_s[-1] if spec.rates[-1] == 0 else None)
    while (until is None or t < until) and (count is None or total < count):
        rounds += 1
        if t > HORIZON_S or rounds > MAX_CYCLES or candidates > MAX_CANDIDATES or (stop is not None and t > stop):
            raise SimkvError(f"arrival generation stopped at {t:.3g} s simulated with {total} of {count} requests "
                             f"({rounds} rounds, {candidates} candidates): the process cannot reach run.num_requests "
                             "in bounded work", field="workload.arrival",
                             fix="raise the rate, end a piecewise curve on a positive rate, or give run.duration_s")
        if spec.process == "onoff":
            on = rng.exponential(spec.on_s)
            times = np.sort(t + rng.uniform(0, on, rng.poisson(spec.rate_on * on)))
            t += on + rng.exponential(spec.off_s)
        else:  # thinning a Poisson process at the peak rate
            lam = peak_rate(spec)
            cand = t + np.cumsum(rng.exponential(1 / lam, 4096))
            times = cand[rng.random(len(cand)) * lam < rate_at(spec, cand)]
            if not cand[-1] > t:   # time no longer advances (peak rate too high for float steps)
                candidates = MAX_CANDIDATES + 1
            t = float(cand[-1])
            candidates += len(cand)
        out.append(times)
        total += len(times)
    times = np.concatenate(out) if out else np.zeros(0)
    if until is not None:
        times = times[times < until]
    return times[:count] if count is not None else times


def arrival_times(spec, rng: np.random.Generator, *, num_requests: int | None = None,
                  duration_s: float | None = None) -> np.ndarray:
    """Arrival times (s) of either the first `num_requests` requests or every request in
    [0, duration_s); the first request arrives one gap after time 0."""
    check_reachable(spec, num_requests=num_requests, duration_s=duration_s)
    if spec.process in ("onoff", "piecewise", "spike"):
        return _varying_times(spec, rng, duration_s, num_requests)
    if num_requests is not None:
        return np.cumsum(sample_gaps(spec, num_requests, rng))
    chunks, t = [], 0.0
    chunk = max(64, int(spec.rate * duration_s * 1.1) + 16)
    while t < duration_s:
        times = t + np.cumsum(sample_gaps(spec, chunk, rng))
        chunks.append(times)
        t = float(times[-1])
    times = np.concatenate(chunks)
    return times[times < duration_s]
