"""Latency and throughput as benchmark tools define them, from the request table.

Definitions follow `vllm bench serve` (vllm/benchmarks/serve.py, `calculate_metrics`), with the
same names in summary.json (`bench`):

- TTFT = first token arriving at the client - the client sending the request; here the engine's
  TTFT plus the frontend's per-request time (`simkv.features.frontend`). `engine_side` holds the engine's.
- E2EL = last token at the client - sending.
- TPOT = (E2EL - TTFT) / (output tokens - 1) per request with more than one output token (the
  first token excluded); statistics over requests.
- ITL = every gap between consecutive tokens of a request, pooled over the requests. Its mean is
  exact (sum of each request's last - first token over the sum of output tokens - 1); its median
  and percentiles come from simkv's token-gap histogram (to 0.23%) and its std from the histogram's
  bin centres.
- mean / median / std (population, numpy's default) / pXX (numpy's linear interpolation), in ms.
- request_throughput, output_throughput, total_token_throughput over `duration_s`, the time
  from the first measured request being sent to the last one finishing (vLLM's benchmark duration
  when nothing is left out as warm-up).

simkv's own `latency_s` block differs: it is engine-side (from the engine seeing the request), in
seconds, with p50/p90/p99, and its throughput counts tokens of steps ending in the measured window.

`concurrency` checks a run against measurements: the mean number of requests in flight (sent but
not answered) over the measured window, and Little's law: requests_per_s should equal
mean_in_flight / mean E2E.
"""

from __future__ import annotations

import numpy as np

from simkv.request import DONE, RequestTable

PERCENTILES = (50, 90, 95, 99)
MS = 1000.0


def client_sent_s(t: RequestTable) -> np.ndarray:
    """When each request was sent by its client: recorded for closed-loop clients; otherwise its
    arrival at the engine minus the frontend's time."""
    sent = getattr(t, "sent_s", None)
    front = getattr(t, "frontend_s", None)
    earlier = t.arrival_s - (front if front is not None else 0.0)
    return earlier.copy() if sent is None else np.where(np.isnan(sent), earlier, sent)


def _ms_stats(name: str, values: np.ndarray) -> dict:
    if not len(values):
        return {f"mean_{name}_ms": None, f"median_{name}_ms": None, f"std_{name}_ms": None,
                **{f"p{p}_{name}_ms": None for p in PERCENTILES}}
    pct = np.percentile(values, PERCENTILES)
    return {f"mean_{name}_ms": float(np.mean(values)) * MS, f"median_{name}_ms": float(np.median(values)) * MS,
            f"std_{name}_ms": float(np.std(values)) * MS,
            **{f"p{p}_{name}_ms": float(v) * MS for p, v in zip(PERCENTILES, pct)}}


def _itl_stats(t, measured, rec) -> dict:
    gaps = np.where(measured & (t.output_tokens > 1), t.output_tokens - 1, 0)
    n = int(gaps.sum())
    if n == 0:
        return _ms_stats("itl", np.zeros(0))
    span = np.where(gaps > 0, t.finish_s - t.first_token_s, 0.0)
    out: dict[str, float | None] = {"mean_itl_ms": float(np.nansum(span)) / n * MS}
    hist = rec.gap_hist
    total = int(hist.sum())
    if total:
        from simkv.metrics import _GAP_LO, _GAP_PER_DECADE
        centres = 10 ** (_GAP_LO + (np.arange(len(hist)) + 0.5) / _GAP_PER_DECADE)
        mean_h = float((hist * centres).sum() / total)
        out["median_itl_ms"] = rec.gap_percentile(50) * MS
        out["std_itl_ms"] = float(np.sqrt(max((hist * (centres - mean_h) ** 2).sum() / total, 0.0))) * MS
        out.update({f"p{p}_itl_ms": rec.gap_percentile(p) * MS for p in PERCENTILES})
    else:
        out.update({"median_itl_ms": None, "std_itl_ms": None, **{f"p{p}_itl_ms": None for p in PERCENTILES}})
    return out


def _requests(t: RequestTable):
    """Per-request columns (parallel sampling: one request is all its sequences)."""
    sent = client_sent_s(t)
    front = t.frontend_s if getattr(t, "frontend_s", None) is not None else np.zeros(t.num_requests)
    if not len(t.group) or not (np.diff(t.group) == 0).any():
        return t, sent, front, t.prompt_tokens, t.output_tokens
    from simkv.metrics import RequestGroups
    g = RequestGroups(t)
    starts = np.flatnonzero(np.r_[True, t.group[1:] != t.group[:-1]])
    return g, sent[starts], front[starts], t.prompt_tokens[starts], np.add.reduceat(t.output_tokens, starts)


def bench_summary(t: RequestTable, rec, frontend: dict) -> dict:
    """The `bench` section of summary.json: vLLM-bench metrics, engine-side TTFT, concurrency."""
    r, sent, front, prompt, total_out = _requests(t)
    measured = (r.arrival_s >= rec.w0) & (r.status == DONE)
    ttft = r.first_token_s - sent
    e2el = r.finish_s - sent
    longer = measured & (r.output_tokens > 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = (e2el - ttft) / (r.output_tokens - 1)
    completed = int(measured.sum())
    duration = float(np.max(r.finish_s[measured]) - np.min(sent[measured])) if completed else 0.0
    total_in, total_output = int(prompt[measured].sum()), int(total_out[measured].sum())
    per = (lambda x: x / duration) if duration > 0 else (lambda x: None)
    out = {"note": "vllm bench serve definitions (calculate_metrics), client-side, ms; see docs/benchmark-load.md",
           "completed": completed, "total_input_tokens": total_in, "total_output_tokens": total_output,
           "duration_s": duration, "request_throughput": per(completed), "output_throughput": per(total_output),
           "total_token_throughput": per(total_in + total_output)}
    out.update(_ms_stats("ttft", ttft[measured]))
    out.update(_ms_stats("tpot", tpot[longer]))
    out.update(_itl_stats(r, measured, rec))
    out.update(_ms_stats("e2el", e2el[measured]))
    engine_ttft = r.first_token_s - r.arrival_s
    out["engine_side"] = {k: v for k, v in _ms_stats("ttft", engine_ttft[measured]).items()}
    out["frontend"] = {**frontend, "mean_s": float(front[measured].mean()) if completed else None}
    out["concurrency"] = concurrency(sent, r.finish_s, r.status, e2el[measured], rec.w0, rec.w1)
    if getattr(t, "clients", None) is not None:
        out["clients"] = {"concurrency": [g.concurrency for g in t.clients.groups],
                          "think_s": [g.think_s for g in t.clients.groups],
                          "ramp_up_s": [g.ramp_up_s for g in t.clients.groups],
                          "warmup_requests": t.clients.warmup_requests}
    return out


def concurrency(sent: np.ndarray, finish: np.ndarray, status: np.ndarray, e2e_measured: np.ndarray,
                w0: float, w1: float) -> dict:
    """Mean requests in flight over [w0, w1] (client-side: sent until answered), and Little's law."""
    window = w1 - w0
    if not (np.isfinite(window) and window > 0):
        return {"window_s": [w0, w1], "mean_in_flight": None, "requests_per_s": None, "mean_e2e_s": None,
                "littles_law_requests_per_s": None, "littles_law_relative_gap": None}
    done = status == DONE
    overlap = np.clip(np.minimum(finish[done], w1) - np.maximum(sent[done], w0), 0.0, None)
    in_flight = float(overlap.sum()) / window
    rps = int(np.count_nonzero((finish[done] >= w0) & (finish[done] <= w1))) / window
    e2e = float(e2e_measured.mean()) if len(e2e_measured) else None
    little = in_flight / e2e if e2e else None
    return {"window_s": [float(w0), float(w1)], "mean_in_flight": in_flight, "requests_per_s": rps, "mean_e2e_s": e2e,
            "littles_law_requests_per_s": little,
            "littles_law_relative_gap": (abs(little - rps) / rps) if (little is not None and rps) else None}
