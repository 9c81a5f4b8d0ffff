"""Figures from Results (matplotlib, Agg): each function returns a Figure and never saves or shows.

Every figure has labelled axes with units and a title saying what was simulated; several
results (variants) are overlaid with one colour each.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import simkv.figure_files  # noqa: E402,F401  (log axes with CPU-independent coordinates)
from simkv.result import Result  # noqa: E402

KV_LAYERS = (("token_tokens", "token states", "#2b6cb0"), ("reserved_tokens", "reserved", "#68d391"),
             ("internal_frag_tokens", "internal fragmentation", "#f6ad55"),
             ("external_frag_tokens", "external fragmentation", "#e53e3e"), ("free_tokens", "free", "#e2e8f0"))


def _title(results: dict[str, Result], what: str) -> str:
    first = next(iter(results.values()))
    setup = first.summary.get("setup", {})
    return f"{what}\n{first.summary.get('scenario', '')}: {setup.get('model', '')} on {setup.get('gpu', '')}" \
           f" (TP {setup.get('tensor_parallel', 1)})"


def kv_breakdown_over_time(results: dict[str, Result]) -> Figure:
    """Stacked KV breakdown (fraction of capacity) over simulated time, one panel per result."""
    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n + 0.8), sharex=True, squeeze=False)
    for ax, (name, res) in zip(axes[:, 0], results.items()):
        ts = res.timeseries
        if not len(ts.get("time_s", [])):
            continue
        cap = res.summary["kv_cache"]["capacity_tokens"]
        layers = [np.asarray(ts[key]) / cap for key, _, _ in KV_LAYERS]
        ax.stackplot(ts["time_s"], *layers, labels=[lbl for _, lbl, _ in KV_LAYERS],
                     colors=[c for _, _, c in KV_LAYERS], step="post")
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of KV cache")
        ax.set_title(name, fontsize=10, loc="left")
    axes[-1, 0].set_xlabel("simulated time (s)")
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    fig.suptitle(_title(results, "KV cache breakdown over time"), fontsize=11)
    fig.tight_layout()
    return fig


def kv_breakdown_bars(results: dict[str, Result]) -> Figure:
    """Time-averaged KV breakdown per result as stacked horizontal bars."""
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.7 * len(results)))
    names = list(results)
    left = np.zeros(len(names))
    for key, label, colour in KV_LAYERS:
        part = key.replace("_tokens", "")
        vals = np.array([results[n].summary["kv_cache"]["mean_fraction"][part] for n in names])
        ax.barh(names, vals, left=left, color=colour, label=label, edgecolor="white")
        left += vals
    ax.set_xlim(0, 1)
    ax.set_xlabel("time-averaged fraction of KV cache capacity")
    ax.invert_yaxis()
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=5, fontsize=7, frameon=False)
    ax.set_title(_title(results, "Where the KV cache goes (measured window)"), fontsize=10, pad=22)
    fig.tight_layout()
    return fig


def latency_cdfs(results: dict[str, Result]) -> Figure:
    """Empirical CDFs of TTFT, TPOT, E2E and each request's longest token gap."""
    panels = (("ttft_s", "time to first token (s)"), ("tpot_s", "time per output token (s)"),
              ("e2e_s", "end-to-end latency (s)"), ("max_tbt_s", "longest gap between tokens (s)"))
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (col, label) in zip(axes.flat, panels):
        for name, res in results.items():
            warm = res.summary["throughput"]["measured_window_s"][0]
            arrival = np.asarray(res.requests.get("arrival_s", []))
            vals = np.asarray(res.requests.get(col, []))[arrival >= warm] if len(arrival) else np.array([])
            vals = np.sort(vals[np.isfinite(vals)])
            if len(vals):
                ax.plot(vals, np.arange(1, len(vals) + 1) / len(vals), label=name, drawstyle="steps-post")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(_title(results, "Latency distributions (requests after warm-up)"), fontsize=11)
    fig.tight_layout()
    return fig


def batch_and_queue(results: dict[str, Result]) -> Figure:
    """Running batch size and waiting queue depth over simulated time."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, res in results.items():
        ts = res.timeseries
        if not len(ts.get("time_s", [])):
            continue
        top.step(ts["time_s"], ts["num_running"], where="post", label=name)
        bottom.step(ts["time_s"], ts["num_waiting"], where="post", label=name)
    top.set_ylabel("running requests")
    bottom.set_ylabel("waiting requests")
    bottom.set_xlabel("simulated time (s)")
    top.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.suptitle(_title(results, "Batch size and queue depth"), fontsize=11)
    fig.tight_layout()
    return fig


def utilization_over_time(results: dict[str, Result]) -> Figure:
    """KV utilization (token states / capacity) over time, results overlaid."""
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, res in results.items():
        ts = res.timeseries
        if len(ts.get("time_s", [])):
            ax.step(ts["time_s"], ts["utilization"], where="post", label=name)
    ax.set_ylim(0, 1)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("KV utilization (token states / capacity)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_title(results, "KV cache utilization over time"), fontsize=10)
    fig.tight_layout()
    return fig


SWEEP_PANELS = (
    ("output_tokens_per_s", "output throughput (tokens/s)", False),
    ("ttft_p99_s", "TTFT p99 (s; dashed p50)", True),
    ("tbt_p99_s", "TBT p99 (s; dashed p50)", True),
    ("e2e_p99_s", "E2E p99 (s; dashed p50)", True),
    ("kv_token_mean", "KV utilization (time-averaged)", False),
    ("max_running", "peak concurrent requests", False),
    ("preemptions", "preemptions (count)", False),
    ("rejected", "rejected requests (count)", False),
)


def field_label(field: str) -> str:
    """`workload.arrival.rate (requests/s)`: the dotted field with the unit its schema documents."""
    import re

    from simkv.reference import models_in
    from simkv.scenario import Scenario
    models: list = [Scenario]
    desc = None
    for part in field.split("."):
        found = [m.model_fields[part] for m in models if part in m.model_fields]
        if not found:
            return field
        desc = found[0].description
        models = [m for m, _ in models_in(found[0].annotation)]
    unit = re.search(r"\(([^()]*)\)\s*$", desc or "")
    return f"{field} ({unit.group(1)})" if unit else field


def sweep_curves(rows: list[dict], field: str, title: str) -> Figure:
    """Headline metrics against the swept value, one line per variant (rows: flat metrics with
    'value' and 'variant'; optional 'group' picks the colour and 'style' the marker and dashes, so
    curves of a second swept field stay visible where they coincide)."""
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    groups = list(dict.fromkeys(r.get("group", r["variant"]) for r in rows))
    styles = list(dict.fromkeys(r.get("style", "") for r in rows))
    values = list(dict.fromkeys(str(r["value"]) for r in rows))
    categorical = not all(_is_number(v) for v in values)   # e.g. a sweep over engine presets
    position = (lambda v: float(values.index(str(v)))) if categorical else (lambda v: float(v))
    for ax, (key, label, with_p50) in zip(axes.flat, SWEEP_PANELS):
        for name in variants:
            pts = [r for r in rows if r["variant"] == name]
            x = [position(r["value"]) for r in pts]
            colour = f"C{groups.index(pts[0].get('group', name)) % 10}"
            k = styles.index(pts[0].get("style", ""))
            ax.plot(x, [np.nan if r[key] is None else r[key] for r in pts], color=colour, label=name,
                    marker="osD^v<>"[k % 7], ls=("-", ":", "-.")[k % 3], ms=6 - 1.5 * min(k, 2), alpha=0.9)
            if with_p50:
                p50 = key.replace("_p99_", "_p50_")
                ax.plot(x, [np.nan if r[p50] is None else r[p50] for r in pts], "--", color=colour, lw=1)
        if with_p50:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel(field_label(field))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        if categorical:
            ax.set_xticks(range(len(values)), values, rotation=20, fontsize=8)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


FIGURES = {
    "kv_breakdown.png": kv_breakdown_over_time,
    "kv_breakdown_mean.png": kv_breakdown_bars,
    "kv_utilization.png": utilization_over_time,
    "latency_cdf.png": latency_cdfs,
    "batch_queue.png": batch_and_queue,
}
