"""A fleet run's Result: top-level metrics over every request of the fleet, and a `fleet` block with
per-pool summaries (simkv.metrics.summarize on each pool's requests), per-replica metrics, load
imbalance, router decisions, prefix hit rates and retries; requests.csv gains pool and replica."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np

from simkv.features import frontend
from simkv.metrics.bench import bench_summary
from simkv.metrics import KV_FIELDS, SERIES_COLUMNS, Recorder, summarize
from simkv.request import WAITING, RequestTable


def merged_table(fleet) -> RequestTable:
    """One table for the whole fleet: each request's row from the pool that had it."""
    _claim_unrouted(fleet)
    owner = fleet.pool_of
    if (owner < 0).any():
        raise RuntimeError(f"fleet: {int((owner < 0).sum())} requests never reached a pool (a simkv bug)")
    tables = [p.sim.table for p in fleet.pools]
    out = copy.copy(tables[0])
    n = out.num_requests
    for key, col in vars(tables[0]).items():
        if isinstance(col, np.ndarray) and col.shape[:1] == (n,):
            merged = col.copy()
            for p, t in enumerate(tables[1:], start=1):
                mine = owner == p
                merged[mine] = getattr(t, key)[mine]
            setattr(out, key, merged)
    lost = np.flatnonzero(out.status == WAITING)
    if len(lost):
        raise RuntimeError(f"fleet: request {int(lost[0])} (and {len(lost) - 1} more) neither served nor "
                           "rejected (a simkv bug)")
    return out


def _claim_unrouted(fleet) -> None:
    """A turn never sent (its conversation ended earlier) belongs to the pool of the turn that ended it."""
    nt = fleet.t.next_turn
    if nt is None:
        return
    for rid in np.flatnonzero((fleet.pool_of >= 0) & (nt >= 0)).tolist():
        p, nxt = fleet.pool_of[rid], int(nt[rid])
        while nxt >= 0 and fleet.pool_of[nxt] < 0:
            fleet.pool_of[nxt] = p
            nxt = int(nt[nxt])


def subset(t: RequestTable, rows: np.ndarray) -> RequestTable:
    """The requests `rows` of a table, as a table of their own (for per-pool / per-replica summaries)."""
    n = t.num_requests
    out = copy.copy(t)
    for key, col in vars(t).items():
        if isinstance(col, np.ndarray) and col.shape[:1] == (n,):
            setattr(out, key, col[rows])
    out.num_requests = int(len(rows))
    out.next_turn = None if t.next_turn is None else np.full(len(rows), -1, dtype=np.int64)
    out.trace_blocks = None
    return out


def combined_recorder(recs: list[Recorder]) -> Recorder:
    """The fleet's recorder: capacities, KV integrals, busy integrals, token counts and token-gap
    histograms summed; peaks and maxima are sums of the replicas' (an upper bound on the fleet's)."""
    r0 = recs[0]
    out = Recorder(sum(r.capacity for r in recs), r0.w0, r0.w1, r0.max_points)
    for key in ("kv_integral", "kv_peak", "gap_hist"):
        setattr(out, key, sum(getattr(r, key) for r in recs))
    for key in ("running_integral", "waiting_integral", "max_running", "max_waiting", "window_tokens",
                "total_tokens", "num_steps"):
        setattr(out, key, sum(getattr(r, key) for r in recs))
    out.gap_max_s = max(r.gap_max_s for r in recs)
    return out


def _grid_series(recs: list[Recorder], end: float, points: int) -> tuple[np.ndarray, list[dict]]:
    """Every replica's time series held (step-wise) onto one grid."""
    grid = np.linspace(0.0, max(end, 1e-3), max(2, min(points, 2000)))
    out = []
    for r in recs:
        s = r.time_series()
        times = s["time_s"]
        if not len(times):
            row = {k: np.zeros(len(grid)) for k in SERIES_COLUMNS[1:]}
            row["free_tokens"] = np.full(len(grid), float(r.capacity))
        else:
            j = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(times) - 1)
            row = {k: np.asarray(s[k], dtype=float)[j] for k in SERIES_COLUMNS[1:]}
        row["capacity"] = float(r.capacity)
        out.append(row)
    return grid, out


def _timeseries(fleet, end: float) -> dict:
    recs = [rec for p in fleet.pools for rec in p.recorders]
    grid, per = _grid_series(recs, end, fleet.scenario.run.time_series_points)
    cols = {"time_s": grid}
    cap = sum(r["capacity"] for r in per)
    for k in KV_FIELDS + ("num_running", "num_waiting"):
        cols[k] = sum(r[k] for r in per).astype(np.int64)
    cols["utilization"] = cols["token_tokens"] / cap
    cols = {k: cols[k] for k in SERIES_COLUMNS}
    for g, r in enumerate(per):   # per replica: load (running + waiting) and KV utilisation
        if g >= 64:
            break
        cols[f"replica{g}_load"] = (r["num_running"] + r["num_waiting"]).astype(np.int64)
        cols[f"replica{g}_kv"] = r["token_tokens"] / r["capacity"]
    return cols


def _compact(s: dict) -> dict:
    lat, kv, tp = s["latency_s"], s["kv_cache"], s["throughput"]
    out = {"requests": s["requests"]["total"], "completed": s["requests"]["completed"],
           "rejected": s["requests"]["rejected"],
           "output_tokens_per_s": tp["output_tokens_per_s"], "requests_per_s": tp["requests_per_s"],
           "ttft_p50_s": lat["ttft"]["p50"], "ttft_p99_s": lat["ttft"]["p99"],
           "e2e_p50_s": lat["e2e"]["p50"], "e2e_p99_s": lat["e2e"]["p99"],
           "tpot_p50_s": lat["tpot"]["p50"],
           "kv_utilization_mean": kv["utilization_mean"], "kv_utilization_peak": kv["utilization_peak"],
           "mean_running": s["batch"]["mean_running"], "mean_waiting": s["batch"]["mean_waiting"],
           "prefix_hit_rate": kv.get("prefix_cache", {}).get("hit_rate")}
    if "slo" in s:
        out["slo_attainment"] = s["slo"]["attainment"]
    return out


def _lifetime(spans: list, end: float) -> dict:
    """A replica's GPU spans: first start, last stop (none: never started), every [start, stop]."""
    spans = [[float(a), float(b if b is not None else end)] for a, b in spans]
    return {"started_at_s": spans[0][0] if spans else None, "stopped_at_s": spans[-1][1] if spans else None,
            "lifetimes_s": spans}


def _ratio(values: np.ndarray) -> float | None:
    mean = float(np.mean(values)) if len(values) else 0.0
    return float(np.max(values)) / mean if mean > 0 else None


def fleet_result(fleet, name: str, overrides: dict, request_columns, setup) -> tuple[dict, dict, dict]:
    """(summary, request columns, time series) of a fleet run; the driver (simkv.simulate) wraps
    them in a Result, and lends its per-request column and setup writers."""
    sc = fleet.scenario
    t = merged_table(fleet)
    recs = [rec for p in fleet.pools for rec in p.recorders]
    rec = combined_recorder(recs)
    classes = [(c.name, c.slo) for c in sc.workload.classes] if sc.workload.classes else None
    pool0 = fleet.pools[0].sim
    end = float(np.nanmax(t.finish_s)) if np.isfinite(t.finish_s).any() else rec.w1
    gpus_per = [p.scenario.hardware.tensor_parallel for p in fleet.pools]
    replicas_block, pools_block = [], {}
    for p in fleet.pools:
        mine = fleet.pool_of == p.index
        pool_t = subset(t, np.flatnonzero(mine))
        ps = summarize(pool_t, combined_recorder(p.recorders), slo=p.scenario.slo, classes=classes)
        pools_block[p.name] = {"replicas": p.num_replicas, "gpus": p.num_replicas * p.scenario.hardware.tensor_parallel,
                               "setup": setup(p.sim), "summary": ps}
    replica_work = []
    for g, rep in enumerate(fleet.replicas):
        p = fleet.pools[fleet.pool_index[g]]
        rows = np.flatnonzero(fleet.replica_of == g)
        rs = summarize(subset(t, rows), rep.recorder, slo=p.scenario.slo)
        row = {"replica": g, "pool": p.name, "index_in_pool": fleet.local_index[g],
               "routed": int(fleet.router.decisions[g]), **_compact(rs), "failed_at_s": fleet.failed_at[g],
               **_lifetime(fleet.lifetimes[g], end)}
        replicas_block.append(row)
        replica_work.append(rs["throughput"]["total_output_tokens"])
    decisions = fleet.router.decisions.astype(float)
    busy = np.array([r["mean_running"] + r["mean_waiting"] for r in replicas_block])
    failed = fleet.failed_at
    live = np.array([f is None for f in failed])
    fleet_block = {
        "replicas": len(fleet.replicas),
        "gpus": int(sum(p.num_replicas * tp for p, tp in zip(fleet.pools, gpus_per))),
        "router": {**fleet.spec.router.model_dump(mode="json"),
                   "decisions_per_replica": fleet.router.decisions.tolist(),
                   "prefix_routed_decisions": int(fleet.router.prefix_routed)},
        "imbalance": {"over": "replicas that did not fail; max / mean",
                      "routed_requests": _ratio(decisions[live]),
                      "output_tokens": _ratio(np.array(replica_work, dtype=float)[live]),
                      "busy": _ratio(busy[live])},
        "retries": {"requests_retried": int(np.count_nonzero(fleet.retries)), "retries": int(fleet.retries.sum()),
                    "failed_no_replica": int(np.count_nonzero(t.reject_reason == 6))},
        "faults": [{"replica": g, "pool": fleet.pools[fleet.pool_index[g]].name, "at_s": f}
                   for g, f in enumerate(failed) if f is not None],
        "pools": pools_block,
        "per_replica": replicas_block,
        "requests_csv": "columns pool (index into fleet.pool_names), replica (fleet-wide index), retries",
        "pool_names": [p.name for p in fleet.pools],
    }
    if getattr(fleet, "disagg", None) is not None:
        fleet_block["disaggregation"] = {"prefill": fleet.spec.disaggregation.prefill,
                                         "decode": fleet.spec.disaggregation.decode, **fleet.disagg.summary()}
    if getattr(fleet, "autoscaler", None) is not None:
        fleet_block["autoscale"] = fleet.autoscaler.summary(fleet.env.now)
    extra = {"scenario": sc.name, "variant": name, "overrides": overrides, "setup": setup(pool0),
             "workload_effects": {"outputs_truncated_at_max_model_len": sum(p.sim.num_outputs_truncated for p in fleet.pools)},
             "fleet": fleet_block}
    extra["bench"] = bench_summary(t, rec, frontend.resolve(sc.frontend, pool0.engine.preset))
    summary = summarize(t, rec, slo=sc.slo, extra=extra, classes=classes)
    cols = request_columns(SimpleNamespace(table=t))
    cols.update(pool=fleet.pool_of.copy(), replica=fleet.replica_of.copy(), retries=fleet.retries.copy())
    return summary, cols, _timeseries(fleet, end)
