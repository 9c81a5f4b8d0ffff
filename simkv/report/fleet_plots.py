"""Figures of fleet runs (pure: each returns a matplotlib Figure; simkv.files.results saves them):
per-replica load and KV utilisation over time, the latency CDF of each pool, replicas over time."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from simkv.report.plots import _title, legend_below, log_axis, plt
from simkv.result import Result

MAX_COLUMNS = 4   # variants side by side in the per-replica figure


def fleet_results(results: dict[str, Result]) -> dict[str, Result]:
    """The results that are fleet runs (their summary has a `fleet` block)."""
    return {name: r for name, r in results.items() if "fleet" in r.summary}


def replica_load_and_kv(results: dict[str, Result]) -> Figure:
    """Each replica's load (running + waiting requests) and KV utilisation over time; one column
    per variant (the first few)."""
    runs = list(fleet_results(results).items())[:MAX_COLUMNS]
    cols = max(1, len(runs))
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols + 1.5, 6.4), layout="constrained", squeeze=False)
    for c, (name, res) in enumerate(runs):
        ts, fleet = res.timeseries, res.summary["fleet"]
        time = np.asarray(ts.get("time_s", []), dtype=float)
        for row in fleet["per_replica"]:
            g = row["replica"]
            label = f"{row['pool']} #{row['index_in_pool']}"
            if f"replica{g}_load" in ts:
                axes[0, c].plot(time, np.asarray(ts[f"replica{g}_load"], dtype=float), label=label, lw=1,
                                drawstyle="steps-post")
                axes[1, c].plot(time, 100 * np.asarray(ts[f"replica{g}_kv"], dtype=float), label=label, lw=1,
                                drawstyle="steps-post")
        axes[0, c].set_title(name, fontsize=9)
        axes[0, c].set_ylabel("requests running + waiting")
        axes[1, c].set_ylabel("KV cache used (%)")
        axes[1, c].set_xlabel("time (s)")
        for ax in axes[:, c]:
            ax.grid(alpha=0.3)
    legend_below(fig, axes, ncol=6)
    fig.suptitle(_title(results, "Per-replica load and KV utilisation over time"), fontsize=11)
    return fig


def latency_by_pool(results: dict[str, Result]) -> Figure:
    """Empirical CDFs of TTFT and end-to-end latency of each pool's requests (after warm-up)."""
    panels = (("ttft_s", "time to first token (s)"), ("e2e_s", "end-to-end latency (s)"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    runs = fleet_results(results)
    for ax, (col, label) in zip(axes, panels):
        for name, res in runs.items():
            req = res.requests
            warm = res.summary["throughput"]["measured_window_s"][0]
            arrival = np.asarray(req.get("arrival_s", []), dtype=float)
            pool = np.asarray(req.get("pool", []))
            vals = np.asarray(req.get(col, []), dtype=float)
            for p, pname in enumerate(res.summary["fleet"]["pool_names"]):
                mine = np.sort(vals[(pool == p) & (arrival >= warm) & np.isfinite(vals)]) if len(vals) else vals
                if len(mine):
                    tag = pname if len(runs) == 1 else f"{name}: {pname}"
                    ax.plot(mine, np.arange(1, len(mine) + 1) / len(mine), label=tag, drawstyle="steps-post")
        ax.set_xscale("log")
        log_axis(ax.xaxis)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of the pool's requests")
        ax.grid(alpha=0.3, which="both")
    legend_below(fig, axes, ncol=4)
    fig.suptitle(_title(results, "Latency by pool (requests after warm-up)"), fontsize=11)
    return fig


def replicas_over_time(results: dict[str, Result]) -> Figure:
    """Replicas serving over time, per pool (a replica counts from its start to its stop or failure)."""
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    for name, res in fleet_results(results).items():
        fleet = res.summary["fleet"]
        time = np.asarray(res.timeseries.get("time_s", [0.0, 1.0]), dtype=float)
        for pname in fleet["pool_names"]:
            rows = [r for r in fleet["per_replica"] if r["pool"] == pname]
            alive = np.zeros(len(time))
            for r in rows:
                if "lifetimes_s" in r:   # from its start to its stop (autoscaling, faults)
                    for start, stop in r["lifetimes_s"]:
                        alive += (time >= start) & (time < stop)
                    continue
                stop = r.get("failed_at_s")
                alive += time < stop if stop is not None else 1.0
            tag = pname if len(results) == 1 else f"{name}: {pname}"
            ax.plot(time, alive, label=tag, drawstyle="steps-post")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("replicas serving")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    legend_below(fig, ax, ncol=4)
    fig.suptitle(_title(results, "Replicas over time"), fontsize=11)
    return fig


FLEET_FIGURES = {"fleet_replicas.png": replica_load_and_kv, "fleet_latency_by_pool.png": latency_by_pool,
                 "fleet_replicas_over_time.png": replicas_over_time}
