"""Arrival processes: gaps between requests.

Models: Poisson (exponential gaps) and Gamma gaps with a chosen coefficient of variation.
"""

from __future__ import annotations

import numpy as np

from simkv.scenario import GammaArrivals, PoissonArrivals


def sample_gaps(spec: PoissonArrivals | GammaArrivals, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` inter-arrival gaps in seconds, mean 1/rate."""
    mean = 1.0 / spec.rate
    if isinstance(spec, PoissonArrivals):
        return rng.exponential(mean, n)
    shape = 1.0 / spec.cv ** 2
    return rng.gamma(shape, mean / shape, n)


def arrival_times(spec, rng: np.random.Generator, *, num_requests: int | None = None,
                  duration_s: float | None = None) -> np.ndarray:
    """Arrival times (s) of either the first `num_requests` requests or every request in
    [0, duration_s); the first request arrives one gap after time 0."""
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
