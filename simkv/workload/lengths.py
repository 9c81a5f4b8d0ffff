"""Length distributions for prompts and outputs, as whole tokens >= 1.

Models: fixed, uniform, exponential, lognormal (by mean and p99, or by mu and sigma), each
bounded to [min, max] where the spec gives bounds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from simkv.specs import Z99

if TYPE_CHECKING:  # the schema is an input, read by its `dist` discriminator
    from simkv.scenario import LognormalLength


def lognormal_params(spec: LognormalLength) -> tuple[float, float]:
    """(mu, sigma) of log(length). From (mean, p99): mean = exp(mu + s^2/2) and
    p99 = exp(mu + z s) give s^2/2 - z s + ln(p99/mean) = 0; the smaller root is taken."""
    if spec.mu is not None:
        return spec.mu, spec.sigma
    gap = math.log(spec.p99 / spec.mean)
    sigma = Z99 - math.sqrt(Z99 ** 2 - 2 * gap)
    return math.log(spec.mean) - sigma ** 2 / 2, sigma


def sample_lengths(spec, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` lengths (int64 tokens) from the distribution `spec`."""
    if spec.dist == "fixed":
        return np.full(n, spec.value, dtype=np.int64)
    if spec.dist == "uniform":
        return rng.integers(spec.low, spec.high + 1, n, dtype=np.int64)
    if spec.dist == "exponential":
        raw = np.ceil(rng.exponential(spec.mean, n))
    elif spec.dist == "lognormal":
        mu, sigma = lognormal_params(spec)
        raw = np.rint(rng.lognormal(mu, sigma, n))
    else:  # pragma: no cover - the schema admits nothing else
        raise TypeError(f"unknown length distribution {spec!r}")
    upper = spec.max if spec.max is not None else np.iinfo(np.int64).max // 4
    return np.clip(raw, spec.min, upper).astype(np.int64)
