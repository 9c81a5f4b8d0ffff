"""Request latencies from a schedule and any step durations (simulated or measured): every step
starts when the previous one ended, but not before all its requests have arrived."""

from __future__ import annotations

import numpy as np

from simkv.gpu.schedule import ScheduleTrace


def replay_timeline(trace: ScheduleTrace, durations_s: np.ndarray) -> dict[str, np.ndarray]:
    """Per request: first_token_s, finish_s (last token), ttft_s, e2e_s; and tbt_s, every gap
    between consecutive tokens of a request, pooled."""
    n = len(trace.arrival_s)
    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    gaps: list[float] = []
    t = 0.0
    for step, d in zip(trace.steps, durations_s):
        ids = np.concatenate([step.decode_ids, step.prefill_ids])
        gate = float(trace.arrival_s[ids].max()) if len(ids) else 0.0
        t = max(t, gate) + float(d)
        sampled = np.concatenate([step.decode_ids, step.prefill_ids[step.prefill_done]])
        had = ~np.isnan(last[sampled])
        gaps.extend((t - last[sampled[had]]).tolist())
        first[sampled[~had]] = t
        last[sampled] = t
    return {"first_token_s": first, "finish_s": last, "ttft_s": first - trace.arrival_s,
            "e2e_s": last - trace.arrival_s, "tbt_s": np.array(gaps)}


def percentiles(values: np.ndarray, qs=(50, 90, 99)) -> dict[str, float | None]:
    v = values[~np.isnan(values)] if len(values) else values
    return {f"p{q}": (float(np.percentile(v, q)) if len(v) else None) for q in qs}
