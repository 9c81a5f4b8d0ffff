"""The recorder on a compiled kernel (simkv.metrics.recorder_kernels): total for total the pure
recorder (simkv.metrics.Recorder, kept as the reference), used for runs long enough to pay for
numba's start-up (`new_recorder`, simkv.compiled).

Only the representation differs: the totals the pure recorder keeps as Python numbers live in two
arrays the kernel updates in place (read and set through the same attribute names), and the gap
histogram is an int64 array. The time series (`_sample`), the idle periods and the extra token
gaps stay in Python: they run at most once per grid point or per recompute.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from simkv import compiled
from simkv.metrics import _GAP_BINS, _GAP_LO, _GAP_PER_DECADE, KV_FIELDS, Recorder, _gap_bins
from simkv.sched.base import StepOutcome

_NO_STEPS = np.zeros(0, dtype=np.int64)


def recorder_kernels() -> ModuleType | None:
    """simkv.metrics.recorder_kernels, or None where numba is missing or `SIMKV_COMPILED=0`."""
    return compiled.kernels("simkv.metrics.recorder_kernels")


def new_recorder(capacity_tokens: int, measure_start_s: float, measure_end_s: float, max_points: int,
                 use_kernel: bool) -> Recorder:
    """A recorder: on its compiled kernel if `use_kernel` (and the kernel can be set up), else the
    pure one. The two give the same totals (tests/test_compiled_recorder.py)."""
    kernels = recorder_kernels() if use_kernel else None
    if kernels is None:
        return Recorder(capacity_tokens, measure_start_s, measure_end_s, max_points)
    return CompiledRecorder(capacity_tokens, measure_start_s, measure_end_s, max_points, kernels=kernels)


def _slot(array: str, index: int, kind: type) -> property:
    def get(self):
        return kind(getattr(self, array)[index])

    def put(self, value) -> None:
        getattr(self, array)[index] = value

    return property(get, put, doc=f"{array}[{index}], as a {kind.__name__}")


def _rows(array: str, stop: int, kind: type, doc: str) -> property:
    def get(self):
        return np.array(getattr(self, array)[:stop], dtype=kind)

    def put(self, values) -> None:
        getattr(self, array)[:stop] = values

    return property(get, put, doc=doc)


class CompiledRecorder(Recorder):
    """`Recorder` with `on_steps` in one kernel call (the module docstring)."""

    running_integral = _slot("_f", 5, float)
    waiting_integral = _slot("_f", 6, float)
    gap_max_s = _slot("_f", 7, float)
    w0 = _slot("_f", 8, float)
    w1 = _slot("_f", 9, float)
    max_running = _slot("_i", 5, int)
    max_waiting = _slot("_i", 6, int)
    window_tokens = _slot("_i", 7, int)
    total_tokens = _slot("_i", 8, int)
    num_steps = _slot("_i", 9, int)
    kv_integral = _rows("_f", len(KV_FIELDS), float, Recorder.kv_integral.__doc__)
    kv_peak = _rows("_i", len(KV_FIELDS), int, Recorder.kv_peak.__doc__)
    gap_hist = _rows("_gap_hist", _GAP_BINS, int, Recorder.gap_hist.__doc__)

    def __init__(self, capacity_tokens: int, measure_start_s: float, measure_end_s: float,
                 max_points: int = 2000, *, kernels: ModuleType) -> None:
        k = kernels
        assert (k.GAP_LO, k.GAP_PER_DECADE, k.GAP_BINS) == (_GAP_LO, _GAP_PER_DECADE, _GAP_BINS)
        assert k.F_W1 < k.STATE_LEN and k.I_STEPS < k.STATE_LEN and len(KV_FIELDS) == k.F_RUNNING == k.I_MAX_RUNNING
        self._f = np.zeros(k.STATE_LEN)
        self._i = np.zeros(k.STATE_LEN, dtype=np.int64)
        super().__init__(capacity_tokens, measure_start_s, measure_end_s, max_points)
        self._gap_hist = np.zeros(_GAP_BINS, dtype=np.int64)
        self._attach(k)

    def _attach(self, k: ModuleType) -> None:
        """The kernels, and the KV rows' totals as views of the state arrays (on_idle adds to them)."""
        rows = len(KV_FIELDS)
        self._kv_integral, self._kv_peak = self._f[:rows], self._i[:rows]
        self._kernel, self._near_edge_gaps = k.on_steps, k.near_edge_gaps

    def __getstate__(self) -> dict:   # copies and pickles: the kernels are found again, the views remade
        return {k: v for k, v in self.__dict__.items() if k not in ("_kernel", "_near_edge_gaps", "_kv_integral",
                                                                   "_kv_peak")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        k = recorder_kernels()
        if k is None:
            raise RuntimeError("a compiled recorder needs numba (simkv.metrics.recorder_kernels)")
        self._attach(k)

    def on_steps(self, start_s: float, o: StepOutcome, durations_s: np.ndarray) -> None:
        ends, wbs = o.step_end_s, o.waiting_by_step
        m = o.measured_decoders
        left = self._kernel(start_s, ends, durations_s, o.kv, o.num_running, o.num_waiting,
                            _NO_STEPS if wbs is None else wbs, o.tokens_per_step, m, o.gap_steps_from,
                            self._f, self._i, self._gap_hist)
        if left:   # gaps on a bin edge: numpy's log10 bins them, as in the pure recorder
            hist = self._gap_hist
            for b in _gap_bins(self._near_edge_gaps(durations_s, o.gap_steps_from)).tolist():
                hist[b] += m
        last = float(ends[-1])
        if self._next_sample * self.dt <= last:
            self._sample(ends, o.kv, o.num_running, o.num_waiting if wbs is None else wbs)
