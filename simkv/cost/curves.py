"""Monotone interpolation helpers for measured timing curves (pure numpy)."""

from __future__ import annotations

import numpy as np


class LogCurve:
    """y(x) through measured points, piecewise linear in log-log space.

    Above the last point y grows in proportion to x (work-bound kernels scale linearly);
    below the first point y stays at its first value (launch- and latency-bound kernels do not
    get faster with less work). Duplicate x values are averaged in log space.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = np.asarray(x, float), np.asarray(y, float)
        if len(x) == 0 or (x <= 0).any() or (y <= 0).any():
            raise ValueError("a timing curve needs positive points")
        ux, inv = np.unique(x, return_inverse=True)
        ly = np.bincount(inv, weights=np.log(y)) / np.bincount(inv)
        self.lx, self.ly = np.log(ux), ly
        self.x_max, self.y_max = float(ux[-1]), float(np.exp(ly[-1]))

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, float)
        out = np.exp(np.interp(np.log(np.maximum(x, 1e-300)), self.lx, self.ly))
        above = x > self.x_max
        if np.any(above):
            out = np.where(above, self.y_max * x / self.x_max, out)
        return out


def blend_log(x: float, x0: float, y0, x1: float, y1):
    """Interpolate between two curves' values in log-log space at x (x0 < x1); outside
    [x0, x1] scale the nearer curve in proportion to x."""
    if x <= x0:
        return y0 * (x / x0)
    if x >= x1:
        return y1 * (x / x1)
    w = (np.log(x) - np.log(x0)) / (np.log(x1) - np.log(x0))
    return np.exp((1 - w) * np.log(y0) + w * np.log(y1))
