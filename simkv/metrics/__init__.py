"""Recording and summarising a run: time-weighted KV breakdown, batch and queue, a bounded time
series, token gaps as a streaming histogram, and per-request latency percentiles.

Definitions (DESIGN.md): TTFT = first token - arrival; TBT = gaps between a request's tokens
(stalls included), pooled over all tokens of measured requests; E2E = finish - arrival;
TPOT = (E2E - TTFT) / (output tokens - 1); queueing = first scheduled - arrival. Requests arriving
before warm-up are left out; throughput counts tokens of steps ending in the measured window
[warm-up, end of arrivals].

Offered vs served: latency percentiles are over served requests (finished, arrived after warm-up).
SLO attainment and goodput are over offered requests: every request that arrived in the measured
window, a request the engine refused (queue full, or a conversation ended by an earlier turn that
could not run) counting as a miss. Requests no engine of this configuration could ever serve (prompt
over max_model_len, reservation larger than the whole KV cache, prompt over the prefill budget) are
counted by cause and left out of the attainment denominator. The offered latency view counts a
refused request as infinitely late (a percentile that falls on one is None, "∞" in the report).
A turn never sent because its conversation ended counts from the arrival of the turn that ended it.
"""

from __future__ import annotations

import math

import numpy as np

from simkv.request import (DONE, PROMPT_OVER_PREFILL_BUDGET, REFUSED_BY_ENGINE, REJECT_REASONS, REJECTED,
                           SESSION_ENDED, RequestTable)
from simkv.kv.base import FREE, KV_ROWS, TOKEN
from simkv.sched.base import StepOutcome
from simkv.metrics.summary import Summary

KV_FIELDS = KV_ROWS   # the breakdown rows, named in simkv.kv.base
SERIES_COLUMNS = ("time_s",) + KV_FIELDS + ("utilization", "num_running", "num_waiting")
# token-gap histogram: log-spaced bins from 1 us to 10^4 s, 1000 per decade (0.23% wide)
_GAP_LO, _GAP_DECADES, _GAP_PER_DECADE = -6.0, 10, 1000
_GAP_BINS = _GAP_DECADES * _GAP_PER_DECADE
_add_reduce = np.add.reduce   # ndarray.sum without its Python wrapper
_max_reduce = np.maximum.reduce   # ndarray.max likewise
_log10 = np.log10
# reject reasons: no engine of this configuration could ever serve the request (excluded from SLO
# attainment, reported by cause) vs. the engine refused a servable request (a missed SLO)
UNSERVABLE_REASONS = (1, 2, PROMPT_OVER_PREFILL_BUDGET)
REFUSED_REASONS = (REFUSED_BY_ENGINE, SESSION_ENDED)
_SHORT_RUN = 16   # runs of at most this many steps are integrated with Python floats (fewer numpy calls)


def _gap_bin(gap: float) -> int:
    """`_gap_bins` of one gap. numpy's log10, not math.log10: numpy computes it with its own SIMD code
    on some CPUs (AVX-512), and a gap must fall in the same bin whether its step was committed
    alone or in a run (`_gap_bins`)."""
    pos = (float(_log10(max(gap, 1e-12))) - _GAP_LO) * _GAP_PER_DECADE
    return min(max(int(pos), 0), _GAP_BINS - 1)


def _gap_bins(gaps: np.ndarray) -> np.ndarray:
    pos = (np.log10(np.maximum(gaps, 1e-12)) - _GAP_LO) * _GAP_PER_DECADE
    # np.clip's bounds as two ufuncs (the same integers, without clip's Python wrapper)
    return np.minimum(np.maximum(pos.astype(np.int64), 0), _GAP_BINS - 1)


class _ListAsArray:
    """A per-row total kept as a list of Python numbers (the same float64 / int arithmetic as an
    array, without numpy calls on a few numbers per step), read as an array and set from any sequence."""

    def __init__(self, dtype: type, doc: str) -> None:
        self.dtype, self.__doc__ = dtype, doc

    def __set_name__(self, owner, name: str) -> None:
        self.attr = "_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else np.array(getattr(obj, self.attr), dtype=self.dtype)

    def __set__(self, obj, value) -> None:
        setattr(obj, self.attr, [self.dtype(v) for v in value])


class Recorder:
    """Accumulates what the summary and the time series need; memory does not grow with steps."""

    kv_integral = _ListAsArray(float, "slot-seconds of each KV row (KV_FIELDS) over the measured window")
    kv_peak = _ListAsArray(int, "largest slot count of each KV row during the measured window")
    gap_hist = _ListAsArray(int, "token gaps counted in log-spaced bins (_GAP_PER_DECADE per decade from 10^_GAP_LO s)")

    def __init__(self, capacity_tokens: int, measure_start_s: float, measure_end_s: float,
                 max_points: int = 2000) -> None:
        self.capacity = capacity_tokens
        self.w0, self.w1 = measure_start_s, measure_end_s
        # per-row integrals and peaks as Python numbers (the same float64 and int arithmetic as
        # arrays, without numpy calls on five numbers per step); read as arrays (_ListAsArray)
        self._kv_integral = [0.0] * len(KV_FIELDS)
        self._kv_peak = [0] * len(KV_FIELDS)
        self.running_integral = self.waiting_integral = 0.0
        self.max_running = self.max_waiting = 0
        self.window_tokens = 0
        self.total_tokens = 0
        self.num_steps = 0
        self._gap_hist = [0] * _GAP_BINS   # as Python ints (one list index per step)
        self.gap_max_s = 0.0
        self.max_points = max_points
        self.dt = max(measure_end_s, 1e-3) / max_points
        self._next_sample = 0
        self._rows: list[tuple] = []

    # ------------------------------------------------------------ events
    def on_steps(self, start_s: float, o: StepOutcome, durations_s: np.ndarray) -> None:
        ends, kv, k = o.step_end_s, o.kv, len(o.step_end_s)
        last = float(ends[-1])
        integ, peak = self._kv_integral, self._kv_peak
        if k == 1:
            span = max(0.0, min(last, self.w1) - max(start_s, self.w0))
            if span > 0:
                for i, v in enumerate(kv[:, 0].tolist()):
                    integ[i] += span * v
                    if v > peak[i]:
                        peak[i] = v
                self.running_integral += span * o.num_running
                self.waiting_integral += span * o.num_waiting
                self.max_running = max(self.max_running, o.num_running)
                self.max_waiting = max(self.max_waiting, o.num_waiting)
        else:   # step by step: each step starts where the one before ends, and every total
            # takes the steps' terms one at a time, left to right, as k single-step calls would: the
            # totals do not depend on how steps are grouped, and no BLAS kernel (whose summation
            # order varies with the CPU) is involved
            w0, w1 = self.w0, self.w1
            if w0 <= start_s and last <= w1:   # inside the window: a step's overlap is its span
                overlap = ends.copy()
                overlap[1:] -= ends[:-1]
                overlap[0] -= start_s
            else:
                starts = np.concatenate(((start_s,), ends[:-1]))
                overlap = np.maximum(np.minimum(ends, w1) - np.maximum(starts, w0), 0.0)   # clip at 0
            span = float(_max_reduce(overlap))   # > 0 when any step overlaps the window
            if span > 0:
                waiting = o.num_waiting if o.waiting_by_step is None else o.waiting_by_step
                if k <= _SHORT_RUN:
                    self._accumulate_short(overlap.tolist(), kv, o.num_running, waiting)
                else:
                    self._accumulate(overlap, kv, o.num_running, waiting)
                for i, m in enumerate(_max_reduce(kv[:, overlap > 0], axis=1).tolist()):
                    if m > peak[i]:
                        peak[i] = m
                self.max_running = max(self.max_running, o.num_running)
                self.max_waiting = max(self.max_waiting, o.num_waiting if o.waiting_by_step is None
                                       else int(_max_reduce(o.waiting_by_step[overlap > 0])))
        self.num_steps += k
        self.total_tokens += k * o.tokens_per_step
        if self.w0 <= start_s and last <= self.w1:
            self.window_tokens += k * o.tokens_per_step
        elif last >= self.w0 and start_s <= self.w1:
            self.window_tokens += int(np.count_nonzero((ends >= self.w0) & (ends <= self.w1))) * o.tokens_per_step
        if o.measured_decoders and k > o.gap_steps_from:
            if k == 1:
                d = float(durations_s[0])
                self._gap_hist[_gap_bin(d)] += o.measured_decoders
                self.gap_max_s = max(self.gap_max_s, d)
            else:
                gaps = durations_s[o.gap_steps_from:]
                hist, m = self._gap_hist, o.measured_decoders
                for b in _gap_bins(gaps).tolist():
                    hist[b] += m
                self.gap_max_s = max(self.gap_max_s, float(_max_reduce(gaps)))
        if self._next_sample * self.dt <= last:
            self._sample(ends, kv, o.num_running, o.num_waiting if o.waiting_by_step is None else o.waiting_by_step)

    def _accumulate_short(self, overlap: list[float], kv: np.ndarray, running: int, waiting) -> None:
        """Add each step's overlap x value to the KV, running and queue integrals, step after step
        (a few steps: Python floats, the same IEEE arithmetic as `_accumulate`)."""
        integ = self._kv_integral
        for i, row in enumerate(kv.tolist()):
            acc = integ[i]
            for x, v in zip(overlap, row):
                acc += x * v
            integ[i] = acc
        acc = self.running_integral
        for x in overlap:
            acc += x * running
        self.running_integral = acc
        acc = self.waiting_integral
        for x, w in zip(overlap, waiting.tolist() if isinstance(waiting, np.ndarray) else [waiting] * len(overlap)):
            acc += x * w
        self.waiting_integral = acc

    def _accumulate(self, overlap: np.ndarray, kv: np.ndarray, running: int, waiting) -> None:
        """`_accumulate_short` for many steps: one sequential cumulative sum per integral, each
        starting from the integral so far (numpy's accumulate adds left to right)."""
        integ, rows, k = self._kv_integral, len(self._kv_integral), len(overlap)
        terms = np.empty((rows + 2, k + 1))
        terms[:, 0] = integ + [self.running_integral, self.waiting_integral]
        np.multiply(kv, overlap, out=terms[:rows, 1:])
        if isinstance(waiting, np.ndarray):
            np.multiply(overlap, running, out=terms[rows, 1:])
            np.multiply(overlap, waiting, out=terms[rows + 1, 1:])
        else:
            np.multiply(np.array([[running], [waiting]]), overlap, out=terms[rows:, 1:])
        totals = terms.cumsum(axis=1)[:, -1].tolist()
        integ[:] = totals[:rows]
        self.running_integral, self.waiting_integral = totals[rows], totals[rows + 1]

    def on_extra_gaps(self, gaps_s: np.ndarray, value_s: float = 0.0, count: int = 0) -> None:
        """Token gaps that are not a step's length (a preempted request's first token back), and
        `count` more of one value (decoders that waited since the same step)."""
        if len(gaps_s):
            hist = self._gap_hist
            for b in _gap_bins(gaps_s).tolist():
                hist[b] += 1
            self.gap_max_s = max(self.gap_max_s, float(gaps_s.max()))
        if count:
            self._gap_hist[int(_gap_bins(np.array([value_s]))[0])] += count   # the same binning as an array of them
            self.gap_max_s = max(self.gap_max_s, value_s)

    def on_idle(self, start_s: float, end_s: float) -> None:
        """The engine had nothing to run: the whole cache was free."""
        overlap = max(0.0, min(end_s, self.w1) - max(start_s, self.w0))
        self._kv_integral[FREE] += overlap * self.capacity
        if self._next_sample * self.dt <= end_s:
            state = np.zeros((len(KV_ROWS), 1), dtype=np.int64)
            state[FREE] = self.capacity
            self._sample(np.array([end_s]), state, 0, 0)

    def on_end(self, now_s: float) -> None:
        """The engine ran out of work at `now_s`: the rest of the measured window is idle (so the
        KV breakdown integrates over the whole window and its mean fractions sum to 1)."""
        if now_s < self.w1:
            self.on_idle(now_s, self.w1)

    # ------------------------------------------------------------ time series
    def _sample(self, ends, kv, running: int, waiting) -> None:
        """Append the state at every grid time t = s * dt up to ends[-1] (the caller's steps
        cover every grid time since the previous call); `waiting`: one queue depth, or one per step."""
        last = len(ends) - 1
        while self._next_sample * self.dt <= ends[-1]:
            t = self._next_sample * self.dt
            j = min(int(ends.searchsorted(t)), last) if last else 0   # the method: np.searchsorted's own function
            row = tuple(map(int, kv[:, j].tolist()))   # Python ints, without a numpy scalar per value
            queued = int(waiting[j]) if isinstance(waiting, np.ndarray) else waiting
            self._rows.append((self._next_sample, t) + row + (row[TOKEN] / self.capacity, running, queued))
            self._next_sample += 1
            if len(self._rows) > self.max_points:
                self._decimate()

    def _decimate(self) -> None:
        """Double the sampling interval, keeping the rows on the coarser grid."""
        self._rows = [(r[0] // 2,) + r[1:] for r in self._rows if r[0] % 2 == 0]
        self.dt *= 2
        self._next_sample = (self._next_sample + 1) // 2

    def time_series(self) -> dict[str, np.ndarray]:
        cols = list(zip(*self._rows)) if self._rows else [[] for _ in range(len(SERIES_COLUMNS) + 1)]
        return {name: np.asarray(col) for name, col in zip(SERIES_COLUMNS, cols[1:])}

    # ------------------------------------------------------------ token gaps
    def gap_percentile(self, q: float) -> float | None:
        total = int(self.gap_hist.sum())
        if total == 0:
            return None
        cum = np.cumsum(self.gap_hist)
        idx = int(np.searchsorted(cum, q / 100.0 * total))
        upper = 10 ** (_GAP_LO + (idx + 1) / _GAP_PER_DECADE)
        return min(upper, self.gap_max_s)


def _stats(values: np.ndarray) -> dict:
    if not len(values):
        return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(values.max())}


def _offered_stats(served: np.ndarray, num_refused: int) -> dict:
    """_stats over the served values plus `num_refused` infinite ones: a percentile whose
    interpolation touches an infinite value, the mean and the max are None (infinite)."""
    if not num_refused:
        return _stats(served)
    n_ok, n = len(served), len(served) + num_refused
    out = {"mean": None, "max": None}
    if n_ok:
        v = np.sort(served)
        padded = np.concatenate([v, np.full(num_refused, v[-1])])   # sorts after every finite value
    for q in (50, 90, 99):
        hi = math.ceil(q / 100.0 * (n - 1))
        out[f"p{q}"] = float(np.percentile(padded, q)) if hi < n_ok else None
    return {k: out[k] for k in ("mean", "p50", "p90", "p99", "max")}


def offered_arrival_s(t: RequestTable) -> np.ndarray:
    """Arrival times, with each never-sent turn of a conversation (arrival NaN: an earlier turn
    could not run) given the arrival of the latest earlier turn of its conversation that was sent."""
    arrival = t.arrival_s
    if t.session is None or not np.isnan(arrival).any():
        return arrival
    n = len(arrival)
    idx = np.where(~np.isnan(arrival), np.arange(n), -1)
    last = np.maximum.accumulate(idx)
    same = (last >= 0) & (t.session[np.maximum(last, 0)] == t.session)
    return np.where(np.isnan(arrival) & same, arrival[np.maximum(last, 0)], arrival)


def request_latencies(t: RequestTable) -> dict[str, np.ndarray]:
    """Per-request latency columns (NaN where undefined)."""
    ttft = t.first_token_s - t.arrival_s
    e2e = t.finish_s - t.arrival_s
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(t.output_tokens > 1, (e2e - ttft) / (t.output_tokens - 1), np.nan)
    return {"ttft_s": ttft, "e2e_s": e2e, "tpot_s": tpot, "queue_s": t.first_scheduled_s - t.arrival_s,
            "max_tbt_s": np.where(t.output_tokens > 1, t.tbt_max_s, np.nan)}


class RequestGroups:
    """Per-request view of a table whose requests fan out into several sequences (parallel
    sampling): a request's first token is its earliest sequence's, it finishes with its last, and
    its output is its longest sequence (TPOT is the pace of the longest). Rows of a request are
    consecutive."""

    def __init__(self, t: RequestTable) -> None:
        starts = np.flatnonzero(np.r_[True, t.group[1:] != t.group[:-1]])
        self.starts = starts
        first = lambda col: col[starts]
        self.num_requests = len(starts)
        self.arrival_s = first(t.arrival_s)
        self.first_scheduled_s = np.fmin.reduceat(t.first_scheduled_s, starts)
        self.first_token_s = np.fmin.reduceat(t.first_token_s, starts)
        self.finish_s = np.maximum.reduceat(t.finish_s, starts)       # NaN while any sequence runs
        self.output_tokens = np.maximum.reduceat(t.output_tokens, starts)
        self.status = np.where(np.minimum.reduceat((t.status == DONE).astype(np.int8), starts) == 1, DONE,
                               first(t.status)).astype(np.int8)
        self.reject_reason = first(t.reject_reason)
        self.num_preemptions = np.add.reduceat(t.num_preemptions, starts)
        self.tbt_max_s = np.maximum.reduceat(t.tbt_max_s, starts)
        self.prefix_hit_tokens = np.add.reduceat(t.prefix_hit_tokens, starts)
        self.prefix_query_tokens = np.add.reduceat(t.prefix_query_tokens, starts)
        self.prefix_hit_blocks = np.add.reduceat(t.prefix_hit_blocks, starts)
        self.prefix_query_blocks = np.add.reduceat(t.prefix_query_blocks, starts)
        self.sequences_per_request = np.diff(np.r_[starts, len(t.group)])
        self.class_id = None if t.class_id is None else first(t.class_id)


class _Views:
    """Which requests each statistic is over (see the module docstring)."""

    def __init__(self, t, offered_arrival: np.ndarray, w0: float) -> None:
        arrived = offered_arrival >= w0                          # NaN (never arrived) -> False
        rejected = t.status == REJECTED
        self.arrived = arrived
        self.served = (t.arrival_s >= w0) & (t.status == DONE)  # the latency percentiles' requests
        self.unservable = arrived & rejected & np.isin(t.reject_reason, UNSERVABLE_REASONS)
        self.offered = arrived & ~self.unservable                # SLO attainment's denominator
        self.refused = self.offered & rejected
        self.missing = self.offered & ~self.served                # refused: infinite latency

    def restrict(self, mine: np.ndarray) -> "_Views":
        out = object.__new__(_Views)
        for k, v in vars(self).items():
            setattr(out, k, v & mine)
        return out


def _unservable_by_reason(t, rows: np.ndarray) -> dict[str, int]:
    counts = {REJECT_REASONS[i]: int(np.count_nonzero(rows & (t.reject_reason == i))) for i in UNSERVABLE_REASONS}
    return {k: v for k, v in counts.items() if v}


def _latency(lat, t, rows: np.ndarray) -> dict:
    return {"ttft": _stats(lat["ttft_s"][rows]), "e2e": _stats(lat["e2e_s"][rows]),
            "tpot": _stats(lat["tpot_s"][rows & (t.output_tokens > 1)]), "queue": _stats(lat["queue_s"][rows])}


def _latency_offered(lat, t, v: _Views) -> dict:
    """Percentiles over offered requests, a refused one counting as infinitely late."""
    many = t.output_tokens > 1
    out = {"over": "offered requests (arrived in the window, unservable excluded); refused = infinite latency "
                   "(a percentile, mean or max that falls on one is null)",
           "requests": int(v.offered.sum()), "refused": int(v.missing.sum())}
    for key in ("ttft", "e2e", "queue"):
        out[key] = _offered_stats(lat[f"{key}_s"][v.served], int(v.missing.sum()))
    out["tpot"] = _offered_stats(lat["tpot_s"][v.served & many], int((v.missing & many).sum()))
    return out


def summarize(t: RequestTable, rec: Recorder, *, slo=None, extra: dict | None = None,
              classes: list[tuple[str, object]] | None = None) -> Summary:
    """The run's summary: throughput, latency percentiles, KV breakdown, batch, preemptions.
    Request statistics are per request; with parallel sampling a request is all its sequences.
    `classes` ([(name, slo)]) adds per-class request statistics."""
    offered_arrival = offered_arrival_s(t)
    if len(t.group) and (np.diff(t.group) == 0).any():
        t = RequestGroups(t)
        offered_arrival = offered_arrival[t.starts]
    lat = request_latencies(t)
    views = _Views(t, offered_arrival, rec.w0)
    measured = views.served
    window = span = rec.w1 - rec.w0   # the measured window (s)
    finished_in_window = np.count_nonzero((t.finish_s >= rec.w0) & (t.finish_s <= rec.w1))
    kv_mean = rec.kv_integral / (span * rec.capacity)
    kv = {name.replace("_tokens", ""): float(v) for name, v in zip(KV_FIELDS, kv_mean)}
    kv_peak = {name.replace("_tokens", ""): int(v) / rec.capacity for name, v in zip(KV_FIELDS, rec.kv_peak)}
    rejected = t.status == REJECTED
    reasons = {REJECT_REASONS[i]: int(np.count_nonzero(t.reject_reason == i)) for i in range(1, len(REJECT_REASONS))}
    latency = _latency(lat, t, measured)
    latency = {"ttft": latency["ttft"],
               "tbt": {"p50": rec.gap_percentile(50), "p90": rec.gap_percentile(90), "p99": rec.gap_percentile(99),
                       "max": rec.gap_max_s if rec.gap_hist.any() else None,
                       "note": "pooled over every token gap of measured requests; percentiles to 0.23%"},
               "e2e": latency["e2e"], "tpot": latency["tpot"], "queue": latency["queue"],
               "over": "served requests (finished, arrived after warm-up); see latency_s_offered"}
    summary = {
        "requests": {
            "total": int(t.num_requests), "measured": int(measured.sum()), "completed": int(np.count_nonzero(t.status == DONE)),
            "rejected": int(rejected.sum()), "rejected_by_reason": {k: v for k, v in reasons.items() if v},
            "preempted_requests": int(np.count_nonzero(t.num_preemptions[measured] > 0)),
            "preemptions": int(t.num_preemptions.sum()),
            "arrived_in_window": int(views.arrived.sum()), "refused_in_window": int(views.refused.sum()),
            "unservable": _unservable_by_reason(t, views.unservable),
            "unservable_total": _unservable_by_reason(t, rejected),
        },
        "throughput": {
            "measured_window_s": [rec.w0, rec.w1],
            "output_tokens_per_s": rec.window_tokens / window,
            "requests_per_s": finished_in_window / window,
            "total_output_tokens": int(rec.total_tokens),
            "makespan_s": float(np.nanmax(t.finish_s)) if np.isfinite(t.finish_s).any() else 0.0,
        },
        "latency_s": latency,
        "latency_s_offered": _latency_offered(lat, t, views),
        "kv_cache": {
            "capacity_tokens": int(rec.capacity),
            "mean_fraction": kv, "peak_fraction": kv_peak,
            "utilization_mean": kv["token"], "utilization_peak": kv_peak["token"],
        },
        "batch": {"mean_running": rec.running_integral / span, "max_running": int(rec.max_running),
                  "mean_waiting": rec.waiting_integral / span, "max_waiting": int(rec.max_waiting),
                  "steps": int(rec.num_steps)},
    }
    queried = int(t.prefix_query_tokens[measured].sum())
    if queried:
        hit = int(t.prefix_hit_tokens[measured].sum())
        hit_b, query_b = int(t.prefix_hit_blocks[measured].sum()), int(t.prefix_query_blocks[measured].sum())
        summary["kv_cache"]["prefix_cache"] = {"hit_tokens": hit, "query_tokens": queried, "hit_rate": hit / queried,
                                               "hit_blocks": hit_b, "query_blocks": query_b,
                                               "block_hit_rate": hit_b / query_b if query_b else None}
    if slo is not None and any(v is not None for v in (slo.ttft_s, slo.tpot_s, slo.e2e_s)):
        summary["slo"] = _slo(lat, views, slo, window)
    if isinstance(t, RequestGroups):
        summary["requests"]["sequences"] = int(t.sequences_per_request.sum())
    if classes and t.class_id is not None:
        summary["classes"] = {name: _class_summary(t, lat, views, t.class_id == i, cls_slo or slo, rec)
                              for i, (name, cls_slo) in enumerate(classes)}
    if extra:
        summary.update(extra)
    return summary


def _class_summary(t, lat, views: _Views, mine, slo, rec: Recorder) -> dict:
    """One class's request counts, latency percentiles and SLO attainment."""
    v = views.restrict(mine)
    window = rec.w1 - rec.w0
    out = {"requests": int(mine.sum()), "measured": int(v.served.sum()),
           "rejected": int(np.count_nonzero(mine & (t.status == REJECTED))),
           "requests_per_s": int(np.count_nonzero(mine & (t.finish_s >= rec.w0) & (t.finish_s <= rec.w1))) / window,
           "latency_s": dict(_latency(lat, t, v.served), over="served requests (finished, arrived after warm-up)"),
           "arrived_in_window": int(v.arrived.sum()), "refused_in_window": int(v.refused.sum()),
           "unservable": _unservable_by_reason(t, v.unservable),
           "latency_s_offered": _latency_offered(lat, t, v)}
    if slo is not None and any(x is not None for x in (slo.ttft_s, slo.tpot_s, slo.e2e_s)):
        out["slo"] = _slo(lat, v, slo, window)
    return out


def _slo(lat, v: _Views, slo, window: float) -> dict:
    """Attainment over offered requests (arrived in the window; refused = missed; unservable left
    out); goodput = offered requests that finished meeting every target, per second of window."""
    ok = v.served.copy()
    for key, target in (("ttft_s", slo.ttft_s), ("tpot_s", slo.tpot_s), ("e2e_s", slo.e2e_s)):
        if target is not None:
            ok &= np.nan_to_num(lat[key], nan=0.0) <= target
    met, offered, served = int(ok.sum()), int(v.offered.sum()), int(v.served.sum())
    unservable, refused = int(v.unservable.sum()), int(v.refused.sum())
    return {"targets": {k: x for k, x in (("ttft_s", slo.ttft_s), ("tpot_s", slo.tpot_s), ("e2e_s", slo.e2e_s)) if x is not None},
            "attainment": (met / offered) if offered else None,
            "goodput_requests_per_s": met / window,
            "over": f"offered requests (arrived in the window), refused = missed; {unservable} unservable excluded",
            "offered": offered, "met": met, "refused": refused, "unservable": unservable,
            "attainment_served": (met / served) if served else None}
