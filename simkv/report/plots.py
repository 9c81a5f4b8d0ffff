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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

import simkv.files.figures  # noqa: E402,F401  (log axes with CPU-independent coordinates)
from simkv.kv.base import KV_ROWS  # noqa: E402
from simkv.result import Result  # noqa: E402

KV_LAYERS = tuple(zip(KV_ROWS, ("token states", "reserved", "internal fragmentation", "external fragmentation", "free"),
                      ("#2b6cb0", "#68d391", "#f6ad55", "#e53e3e", "#e2e8f0")))


def setup_line(setups: list[dict], scenario: str = "") -> str:
    """`scenario: model on GPU (TP n), engine preset` from the summaries' structured setup (never
    from a scenario's free-text description); fields that differ between results list each value."""
    def values(key, default=""):
        return " / ".join(dict.fromkeys(str(s.get(key, default)) for s in setups)) or "?"
    presets = values("preset")
    text = (f"{values('model')} on {values('gpu').upper()} (TP {values('tensor_parallel', 1)}), "
            f"engine preset{'s' if ' / ' in presets else ''} {presets}")
    return f"{scenario}: {text}" if scenario else text


def _title(results: dict[str, Result], what: str) -> str:
    first = next(iter(results.values()))
    return f"{what}\n{setup_line([r.summary.get('setup', {}) for r in results.values()], first.summary.get('scenario', ''))}"


class _LogTicks(LogLocator):
    """Major ticks of a log axis that never crowd: decades (every few when many); over less than
    two decades also 2 and 5 times them; over less than half a decade every integer multiple."""

    def tick_values(self, vmin, vmax):
        if vmin > 0 and vmax > 0:
            span = abs(np.log10(vmax / vmin))
            self.set_params(subs=(1.0,) if span >= 2 else (1.0, 2.0, 5.0) if span >= 0.5 else np.arange(1.0, 10.0))
        return super().tick_values(vmin, vmax)


def _plain(value: float, _pos=None) -> str:
    return f"{value:g}"


def log_axis(axis) -> None:
    """Ticks of a log-scaled `axis` (ax.xaxis / ax.yaxis; after set_xscale("log")) with readable, non-overlapping labels: plain
    numbers (0.01, 0.2, 5) on the major ticks only, unlabelled minor ticks."""
    axis.set_major_locator(_LogTicks(numticks=8))
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_locator(LogLocator(subs=np.arange(2.0, 10.0), numticks=12))
    axis.set_minor_formatter(NullFormatter())


def legend_below(fig, ax_or_axes, ncol: int = 5) -> None:
    """One legend for the figure, below the axes (outside them, so it never covers data); the
    figure uses constrained layout, which makes room for it."""
    axes = np.atleast_1d(ax_or_axes).ravel()
    handles, labels = {}, []
    for ax in axes:
        for h, lbl in zip(*ax.get_legend_handles_labels()):
            if lbl not in handles and not lbl.startswith("_"):
                handles[lbl] = h
                labels.append(lbl)
    if labels:
        fig.legend([handles[lbl] for lbl in labels], labels, loc="outside lower center", ncol=min(ncol, len(labels)),
                   fontsize=8, frameon=False)


def kv_breakdown_over_time(results: dict[str, Result]) -> Figure:
    """Stacked KV breakdown (fraction of capacity) over simulated time, one panel per result."""
    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n + 1.2), sharex=True, squeeze=False, layout="constrained")
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
    legend_below(fig, axes[0, 0])
    fig.suptitle(_title(results, "KV cache breakdown over time"), fontsize=11)
    return fig


def kv_breakdown_bars(results: dict[str, Result]) -> Figure:
    """Time-averaged KV breakdown per result as stacked horizontal bars."""
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.7 * len(results)), layout="constrained")
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
    legend_below(fig, ax)
    fig.suptitle(_title(results, "Where the KV cache goes (measured window)"), fontsize=10)
    return fig


def latency_cdfs(results: dict[str, Result]) -> Figure:
    """Empirical CDFs of TTFT, TPOT, E2E and each request's longest token gap."""
    panels = (("ttft_s", "time to first token (s)"), ("tpot_s", "time per output token (s)"),
              ("e2e_s", "end-to-end latency (s)"), ("max_tbt_s", "longest gap between tokens (s)"))
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.4), layout="constrained")
    for ax, (col, label) in zip(axes.flat, panels):
        for name, res in results.items():
            warm = res.summary["throughput"]["measured_window_s"][0]
            arrival = np.asarray(res.requests.get("arrival_s", []))
            vals = np.asarray(res.requests.get(col, []))[arrival >= warm] if len(arrival) else np.array([])
            vals = np.sort(vals[np.isfinite(vals)])
            if len(vals):
                ax.plot(vals, np.arange(1, len(vals) + 1) / len(vals), label=name, drawstyle="steps-post")
        ax.set_xscale("log")
        log_axis(ax.xaxis)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3, which="both")
    legend_below(fig, axes)
    fig.suptitle(_title(results, "Latency distributions (requests after warm-up)"), fontsize=11)
    return fig


def batch_and_queue(results: dict[str, Result]) -> Figure:
    """Running batch size and waiting queue depth over simulated time."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.4), sharex=True, layout="constrained")
    for name, res in results.items():
        ts = res.timeseries
        if not len(ts.get("time_s", [])):
            continue
        top.step(ts["time_s"], ts["num_running"], where="post", label=name)
        bottom.step(ts["time_s"], ts["num_waiting"], where="post", label=name)
    top.set_ylabel("running requests")
    bottom.set_ylabel("waiting requests")
    bottom.set_xlabel("simulated time (s)")
    legend_below(fig, top)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.suptitle(_title(results, "Batch size and queue depth"), fontsize=11)
    return fig


def utilization_over_time(results: dict[str, Result]) -> Figure:
    """KV utilization (token states / capacity) over time, results overlaid."""
    fig, ax = plt.subplots(figsize=(9, 4.4), layout="constrained")
    for name, res in results.items():
        ts = res.timeseries
        if len(ts.get("time_s", [])):
            ax.step(ts["time_s"], ts["utilization"], where="post", label=name)
    ax.set_ylim(0, 1)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("KV utilization (token states / capacity)")
    ax.grid(alpha=0.3)
    legend_below(fig, ax)
    fig.suptitle(_title(results, "KV cache utilization over time"), fontsize=10)
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

    from simkv.report.reference import models_in
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
    fig, axes = plt.subplots(2, 4, figsize=(16, 8), layout="constrained")
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
            log_axis(ax.yaxis)
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel(field_label(field))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        if categorical:
            ax.set_xticks(range(len(values)), values, rotation=20, fontsize=8)
    legend_below(fig, axes)
    fig.suptitle(title, fontsize=11)
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
