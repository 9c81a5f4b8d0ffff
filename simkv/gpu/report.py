"""Files of a validation run: summary.json, steps.csv (every step: shape, predicted, measured),
report.md and validation.png/svg (predicted vs measured steps; latency CDFs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simkv.result import write_columns
from simkv.files.safe_paths import prepare_folder, write_file
from simkv.gpu.validate import Validation


def write_validation(v: Validation, folder: Path) -> list[str]:
    prepare_folder(folder)
    summary = v.summary
    write_file(folder / "summary.json", json.dumps(summary, indent=2) + "\n", root=folder)
    steps = v.trace.steps
    columns = {"step": np.arange(len(steps)), "start_s_simulated": [s.start_s for s in steps],
               "decode_seqs": [len(s.decode_ids) for s in steps],
               "prefill_seqs": [len(s.prefill_ids) for s in steps],
               "prefill_tokens": [int((s.prefill_end - s.prefill_start).sum()) for s in steps],
               "max_context": [int(max(s.decode_ctx.max(initial=0), s.prefill_end.max(initial=0))) for s in steps],
               "preempted": [len(s.preempted_ids) for s in steps], "predicted_s": v.predicted}
    for kind, seconds in v.measured.items():
        columns[f"measured_{kind}_s"] = seconds
    write_columns(folder / "steps.csv", columns)
    figures = _figure(v, folder)
    write_file(folder / "report.md", _markdown(summary, figures[0]), root=folder)
    return ["summary.json", "steps.csv", "report.md"] + figures


def _figure(v: Validation, folder: Path) -> list[str]:
    import matplotlib.pyplot as plt

    from simkv.files.figures import save_figure
    from simkv.report.plots import log_axis
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), layout="constrained")
    pred = v.predicted * 1e3
    prefill = np.array([len(s.prefill_ids) > 0 for s in v.trace.steps])
    ax = axes[0]
    for i, (kind, seconds) in enumerate(v.measured.items()):
        meas = seconds * 1e3
        ax.scatter(meas[~prefill], pred[~prefill], s=8, color=f"C{i}", marker="o", alpha=0.6, label=f"{kind}: decode-only")
        ax.scatter(meas[prefill], pred[prefill], s=14, color=f"C{i}", marker="^", alpha=0.8, label=f"{kind}: with prefill")
    lo, hi = min(pred.min(), min(m.min() for m in v.measured.values()) * 1e3), max(pred.max(), max(m.max() for m in v.measured.values()) * 1e3)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = measured")
    ax.set(xscale="log", yscale="log", xlabel="measured step time (ms)", ylabel="predicted step time (ms)",
           title="every step of the schedule")
    log_axis(ax.xaxis)
    log_axis(ax.yaxis)
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "frameon": False, "ncol": 2}   # off the data
    ax.legend(fontsize=7, **below)
    for ax, metric, label in ((axes[1], "ttft", "TTFT (s)"), (axes[2], "e2e", "end-to-end latency (s)")):
        curves = [(name if name == "simulated" else f"measured ({name})", tl) for name, tl in v.timelines.items()]
        for i, (name, tl) in enumerate(curves):
            x = np.sort(tl[f"{metric}_s"][~np.isnan(tl[f"{metric}_s"])])
            ax.plot(x, np.arange(1, len(x) + 1) / max(len(x), 1), color="k" if i == 0 else f"C{i - 1}",
                    ls="-" if i == 0 else "--", label=name)
        ax.set(xlabel=label, ylabel="fraction of requests", title=f"{label.split(' (')[0]} distribution")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, **below)
    s = v.summary
    fig.suptitle(f"simkv validate: {s['scenario']} — {s['model']['num_layers']}-layer model on {s['device_name']} "
                 f"({s['dtype']}) vs the {s['cost_model']} prediction for {s['predicted_for']}", fontsize=10)
    return [n for n in save_figure(fig, folder, "validation") if n.endswith(".png")] + ["validation.svg"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ms(x) -> str:
    return "–" if x is None else f"{1e3 * x:.2f}"


def _markdown(s: dict, figure: str) -> str:
    m = s["model"]
    lines = [f"# simkv validate: {s['scenario']}", "",
             f"- Executed on **{s['device_name']}** ({s['device']}, {s['dtype']}): a mini engine with random weights of "
             f"{m['num_layers']} layers × hidden {m['hidden_size']}, {m['num_heads']} query / {m['num_kv_heads']} KV heads "
             f"of {m['head_dim']}, MLP {m['intermediate_size']}, vocabulary {m['vocab_size']}; decode attention by the "
             f"{'Triton paged kernel (blocks read in place)' if s['decode_kernel'] == 'triton' else 'PyTorch gather kernel'}.",
             f"- Predicted by simkv's **{s['cost_model']}** cost model for **{s['predicted_for']}**; the schedule is the "
             f"simulation's own: {s['steps']} steps, {s['requests']} requests, preemptions {s['preemptions']}.",
             f"- Tokens generated {s['tokens_generated']:,} of {s['tokens_expected']:,} expected; paged and contiguous "
             f"engines produced {'identical' if s['outputs_identical_paged_vs_contiguous'] else 'DIFFERENT'} outputs.", "",
             "## Step times: predicted vs measured", "",
             "| KV store | steps | median abs error | p90 abs error | median signed (pred − meas)/meas | decode-only median / p90 | with-prefill median / p90 | total measured / predicted s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, e in s["step_time_error"].items():
        d, p = e["decode_only"], e["with_prefill"]
        lines.append(f"| {kind} | {e['steps']} | {_pct(e['median_abs'])} | {_pct(e['p90_abs'])} | {_pct(e['median_signed'])} | "
                     f"{'–' if d is None else _pct(d['median_abs']) + ' / ' + _pct(d['p90_abs'])} | "
                     f"{'–' if p is None else _pct(p['median_abs']) + ' / ' + _pct(p['p90_abs'])} | "
                     f"{e['measured_total_s']:.3f} / {e['predicted_total_s']:.3f} |")
    lines += ["", "## Latencies: simulated vs measured (ms)", "",
              "| KV store | metric | simulated p50 / p90 / p99 | measured p50 / p90 / p99 |", "|---|---|---:|---:|"]
    for kind, lat in s["latency_s"].items():
        for metric, both in lat.items():
            sim, real = both["simulated"], both["measured"]
            lines.append(f"| {kind} | {metric.upper()} | {_ms(sim['p50'])} / {_ms(sim['p90'])} / {_ms(sim['p99'])} | "
                         f"{_ms(real['p50'])} / {_ms(real['p90'])} / {_ms(real['p99'])} |")
    lines += ["", f"![validation]({figure})", "",
              "Measured latencies replay the same schedule with the measured step times: each step starts when the "
              "previous one ends, but not before its requests arrived. On a CPU the mini model is tiny and the "
              "prediction is for the scenario's GPU, so only the machinery is checked, not the numbers.", ""]
    return "\n".join(lines)
