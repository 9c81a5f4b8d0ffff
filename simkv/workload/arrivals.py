"""Arrival processes.

Models: Poisson (exponential gaps); Gamma gaps with a chosen coefficient of variation; on/off
bursts (Poisson during exponential on-periods, silence during exponential off-periods); a
time-varying Poisson rate given at knots (step or linear, optionally periodic: diurnal curves);
a load spike (the rate times a factor over an interval). Time-varying rates are sampled exactly
by thinning a Poisson process at the peak rate.
"""

from __future__ import annotations

import numpy as np

from simkv.scenario import GammaArrivals, OnOffArrivals, PiecewiseArrivals, PoissonArrivals, SpikeArrivals


def sample_gaps(spec: PoissonArrivals | GammaArrivals, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` inter-arrival gaps in seconds, mean 1/rate."""
    mean = 1.0 / spec.rate
    if isinstance(spec, PoissonArrivals):
        return rng.exponential(mean, n)
    shape = 1.0 / spec.cv ** 2
    return rng.gamma(shape, mean / shape, n)


def rate_at(spec, t: np.ndarray) -> np.ndarray:
    """The instantaneous rate (requests/s) of a time-varying process at times t."""
    if isinstance(spec, SpikeArrivals):
        inside = (t >= spec.start_s) & (t < spec.start_s + spec.duration_s)
        return np.where(inside, spec.rate * spec.factor, spec.rate)
    knots, rates = np.asarray(spec.times_s), np.asarray(spec.rates)
    x = np.mod(t, spec.period_s) if spec.period_s else t
    if spec.interpolate == "linear":
        if spec.period_s:  # wrap to the first knot at the end of the period
            knots, rates = np.append(knots, spec.period_s), np.append(rates, rates[0])
        return np.interp(x, knots, rates)
    return rates[np.searchsorted(knots, x, side="right") - 1]


def peak_rate(spec) -> float:
    if isinstance(spec, SpikeArrivals):
        return spec.rate * max(1.0, spec.factor)
    return float(max(spec.rates))


def _varying_times(spec, rng, until: float | None, count: int | None) -> np.ndarray:
    """Arrival times of a time-varying or bursty process, up to `until` or `count` arrivals."""
    out, t, total = [], 0.0, 0
    while (until is None or t < until) and (count is None or total < count):
        if isinstance(spec, OnOffArrivals):
            on = rng.exponential(spec.on_s)
            times = np.sort(t + rng.uniform(0, on, rng.poisson(spec.rate_on * on)))
            t += on + rng.exponential(spec.off_s)
        else:  # thinning a Poisson process at the peak rate
            lam = peak_rate(spec)
            cand = t + np.cumsum(rng.exponential(1 / lam, 4096))
            times = cand[rng.random(len(cand)) * lam < rate_at(spec, cand)]
            t = float(cand[-1])
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
    if isinstance(spec, (OnOffArrivals, PiecewiseArrivals, SpikeArrivals)):
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
