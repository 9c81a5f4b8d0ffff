"""`simkv cost report`: how well the calibrated step-time model predicts the measured
graph-replayed layers, cross-validated, with a predicted-vs-measured figure (an output edge).

Three views per GPU: leave-one-out over layer_steps rows (the correction refitted without the
row; operator tables kept), leave-one-model-shape-out (that model's operator tables and layer
rows all hidden: its GEMMs come from efficiency curves, its attention and elementwise kernels
from the other models), and two baselines (the plain sum of isolated operators, the roofline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simkv.files.calibration import available_gpus, load_tables  # noqa: E402
from simkv.catalog import builtin_gpus, builtin_models  # noqa: E402
from simkv.studies.step_time import plan_from_shape  # noqa: E402
from simkv.files.figures import save_figure  # noqa: E402
from simkv.cost.calibrated import Calibration, fit_correction, layer_step_features  # noqa: E402
from simkv.cost.exact_fit import dot, matvec  # noqa: E402
from simkv.cost.layer import CALIBRATION_MODELS, OperatorSet  # noqa: E402
from simkv.cost.roofline import RooflineCost  # noqa: E402


@dataclass
class GpuValidation:
    gpu: str
    measured: np.ndarray
    model: np.ndarray
    kind: np.ndarray
    loo: np.ndarray        # leave-one-out predictions (s)
    lomo: np.ndarray       # leave-one-model-shape-out predictions (s)
    op_sum: np.ndarray     # isolated operators summed, no correction
    roofline: np.ndarray
    coef: np.ndarray
    whole: "WholeModelValidation | None" = None


@dataclass
class WholeModelValidation:
    """Whole-model steps (model_steps.csv) against the composed model: layers x layer + lm_head
    alone, with the whole-model terms refitted without the row (leave-one-out), and refitted
    without the row's whole step kind (leave-one-kind-out)."""

    measured: np.ndarray
    kind: np.ndarray
    shape: list
    composed: np.ndarray
    loo: np.ndarray
    loko: np.ndarray
    coef: np.ndarray


def validate_whole(tables, ops, coef, bytes_per_s) -> WholeModelValidation | None:
    from simkv.cost.whole_model import composed_and_features, fit_whole_model
    M = tables.model_steps
    if M is None or not len(M["s"]):
        return None
    y = M["s"]
    composed, x = composed_and_features(tables, ops, coef, bytes_per_s)
    full = fit_whole_model(composed, x, y, float(coef[4]))
    loo, loko = np.empty_like(y), np.empty_like(y)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        loo[i] = composed[i] + dot(x[i], fit_whole_model(composed[keep], x[keep], y[keep], float(coef[4])))
    for kind in np.unique(M["kind"]):
        sel = M["kind"] == kind
        loko[sel] = composed[sel] + matvec(x[sel], fit_whole_model(composed[~sel], x[~sel], y[~sel], float(coef[4])))
    shape = [f"{int(M['prefill_seqs'][i])}x{int(M['prefill_len'][i])} + {int(M['decode_batch'][i])}@{int(M['decode_ctx'][i])}"
             for i in range(len(y))]
    return WholeModelValidation(y, M["kind"], shape, composed, loo, loko, full)


def validate(gpu: str) -> GpuValidation:
    tables = load_tables(gpu)
    L = tables.layer_steps
    y = L["s"]
    ops = OperatorSet.from_tables(tables)
    x = layer_step_features(tables, ops)
    loo = np.empty_like(y)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        loo[i] = dot(x[i], fit_correction(x[keep], y[keep]))
    lomo = np.empty_like(y)
    for name in CALIBRATION_MODELS:
        sel = L["model"] == name
        cal = Calibration.fit(tables, (name,))
        lomo[sel] = matvec(layer_step_features(tables, cal.ops, sel), cal.coef)
    op_sum = x[:, 0] + x[:, 1] + _isolated_elementwise(tables, ops)
    coef = fit_correction(x, y)
    whole = validate_whole(tables, ops, coef, tables.device["d2d_copy_GBps_read_plus_write"] * 1e9)
    return GpuValidation(gpu, y, L["model"], L["kind"], loo, lomo, op_sum, _roofline(tables), coef, whole)


def _isolated_elementwise(tables, ops) -> np.ndarray:
    from simkv.cost.layer import LayerCosts, calibration_shapes
    L, shapes = tables.layer_steps, calibration_shapes(tables)
    out = []
    for i in range(len(L["s"])):
        m = L["prefill_seqs"][i] * L["prefill_len"][i] + L["decode_batch"][i]
        out.append(float(LayerCosts(ops, shapes[str(L["model"][i])]).elementwise(m)))
    return np.array(out)


def _roofline(tables) -> np.ndarray:
    L, models, gpu = tables.layer_steps, builtin_models(), builtin_gpus()[tables.gpu]
    costs = {name: RooflineCost(models[m], gpu, tensor_parallel=tp) for name, (m, tp) in CALIBRATION_MODELS.items()}
    return np.array([costs[str(L["model"][i])].layer_seconds(plan_from_shape(
        int(L["prefill_seqs"][i]), int(L["prefill_len"][i]), int(L["decode_batch"][i]), int(L["decode_ctx"][i])))
        for i in range(len(L["s"]))])


def error_stats(pred: np.ndarray, measured: np.ndarray) -> dict:
    err = np.abs(pred / measured - 1)
    return {"n": int(len(err)), "median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
            "max": float(err.max())}


def _row(label: str, st: dict) -> str:
    return f"| {label} | {st['n']} | {100 * st['median']:.1f}% | {100 * st['p90']:.1f}% | {100 * st['max']:.1f}% |"


def report_markdown(results: list[GpuValidation], figure_dir: str) -> str:
    lines = []
    for v in results:
        lines += [f"### {v.gpu.upper()}", "",
                  f"Fitted coefficients (linear, attention, qkv bytes, elementwise bytes, constant): "
                  f"{', '.join(f'{c:.3g}' for c in v.coef)}.", "",
                  "| predictor | rows | median abs error | p90 | max |", "|---|---:|---:|---:|---:|",
                  _row("**calibrated, leave-one-out**", error_stats(v.loo, v.measured)),
                  _row("calibrated, leave-one-model-shape-out", error_stats(v.lomo, v.measured)),
                  _row("sum of isolated operators (no correction)", error_stats(v.op_sum, v.measured)),
                  _row("roofline of measured ceilings", error_stats(v.roofline, v.measured)), "",
                  "Leave-one-out by model shape and by step kind:", "",
                  "| subset | rows | median | p90 | max | model-shape-out median | p90 | max |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, sel in [(m, v.model == m) for m in CALIBRATION_MODELS] + [(k, v.kind == k) for k in ("prefill", "decode", "mixed")]:
            a, b = error_stats(v.loo[sel], v.measured[sel]), error_stats(v.lomo[sel], v.measured[sel])
            lines.append(f"| {label} | {a['n']} | {100 * a['median']:.1f}% | {100 * a['p90']:.1f}% | {100 * a['max']:.1f}% "
                         f"| {100 * b['median']:.1f}% | {100 * b['p90']:.1f}% | {100 * b['max']:.1f}% |")
        lines += ["", f"![predicted vs measured, {v.gpu}]({figure_dir}/predicted-vs-measured-{v.gpu}.png)", ""]
        lines += whole_markdown(v)
    return "\n".join(lines)


def whole_markdown(v: GpuValidation) -> list[str]:
    w = v.whole
    if w is None:
        return []
    g, a = w.coef
    lines = [f"Whole-model steps ({v.gpu.upper()}, `model_steps.csv`, llama3-8b, 32 layers): fitted graph overhead "
             f"saved {g * 1e6:.1f} us per layer, activation traffic {a:.2f} x elementwise bytes per token per layer.", "",
             "| step kind | rows | layers x layer + lm_head: median | max | **whole model, leave-one-out**: median "
             "| p90 | max | leave-one-kind-out: median | max |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, sel in [("all", np.ones(len(w.measured), bool))] + [(k, w.kind == k) for k in ("prefill", "decode", "mixed")]:
        if not sel.any():
            continue
        c, l, k = (error_stats(p[sel], w.measured[sel]) for p in (w.composed, w.loo, w.loko))
        lines.append(f"| {label} | {c['n']} | {100 * c['median']:.1f}% | {100 * c['max']:.1f}% | {100 * l['median']:.1f}% "
                     f"| {100 * l['p90']:.1f}% | {100 * l['max']:.1f}% | {100 * k['median']:.1f}% | {100 * k['max']:.1f}% |")
    lines += ["", "<details><summary>per step (signed error, leave-one-out)</summary>", "",
              "| kind | prefills + decodes@context | measured ms | composed | whole model |", "|---|---|---:|---:|---:|"]
    for i in range(len(w.measured)):
        lines.append(f"| {w.kind[i]} | {w.shape[i]} | {w.measured[i] * 1e3:.2f} | {100 * (w.composed[i] / w.measured[i] - 1):+.1f}% "
                     f"| {100 * (w.loo[i] / w.measured[i] - 1):+.1f}% |")
    return lines + ["", "</details>", ""]


def figure(v: GpuValidation):
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    colours = {"prefill": "#2b6cb0", "decode": "#dd6b20", "mixed": "#38a169"}
    for ax, pred, title in ((axes[0], v.loo, "calibrated, leave-one-out"),
                            (axes[1], v.lomo, "calibrated, leave-one-model-shape-out")):
        for kind, colour in colours.items():
            sel = v.kind == kind
            ax.scatter(v.measured[sel] * 1e3, pred[sel] * 1e3, s=14, c=colour, label=kind, alpha=0.8)
        lo, hi = v.measured.min() * 1e3 * 0.8, v.measured.max() * 1e3 * 1.25
        grid = np.array([lo, hi])
        ax.plot(grid, grid, "k-", lw=0.8)
        for f in (0.9, 1.1):
            ax.plot(grid, grid * f, "k:", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured layer step (ms, CUDA-graph replay)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("predicted layer step (ms)")
    axes[0].legend(title="step kind (dotted: ±10%)")
    fig.suptitle(f"Calibrated step-time model on {v.gpu.upper()}: one decoder layer of "
                 "llama3-8b, llama2-7b, llama3-70b (TP4 shard)", fontsize=11)
    fig.tight_layout()
    return fig


def write_report(markdown_path: Path, figure_dir: Path, gpus: list[str] | None = None) -> list[GpuValidation]:
    """Validate each GPU, write the figures and the generated section of the markdown file
    (between the GENERATED markers, keeping the hand-written text around them)."""
    results = [validate(g) for g in (gpus or available_gpus())]
    figure_dir.mkdir(parents=True, exist_ok=True)
    for v in results:
        save_figure(figure(v), figure_dir, f"predicted-vs-measured-{v.gpu}")
    from simkv.files.generated_section import link_dir, write_generated_section
    body = report_markdown(results, str(link_dir(figure_dir, markdown_path))) + "\n" + vidur_markdown()
    write_generated_section(markdown_path, body, "<!-- GENERATED by `simkv cost report`: do not edit below -->",
                            "<!-- END GENERATED -->", "Step-time model")
    return results


# ---------------------------------------------------------------- Vidur cross-checks (H100 GEMMs, A100 model)
CROSS_OPS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def vidur_h100_crosscheck(tokens=(1, 16, 256, 1024, 4096)) -> list[tuple[int, str, float, float]]:
    """(m, op, Vidur H100 ms, simkv H100 ms) for Llama-2-7B's layer GEMMs (TP 1)."""
    from simkv.files.calibration import load_vidur_compute
    from simkv.cost.curves import LogCurve
    from simkv.cost.vidur_a100 import vidur_tables
    g, _ = vidur_tables({"Llama-2-7b-hf": load_vidur_compute("h100", "Llama-2-7b-hf")})
    H = load_tables("h100").gemm
    out = []
    for m in tokens:
        for op in CROSS_OPS:
            a = (g["model"] == "vidur:Llama-2-7b-hf:tp1") & (g["op"] == op)
            h = (H["model"] == "llama2-7b") & (H["op"] == op) & (H["dtype"] == "bfloat16")
            out.append((m, op, float(LogCurve(g["m"][a], g["s"][a])(m)) * 1e3, float(LogCurve(H["m"][h], H["s"][h])(m)) * 1e3))
    return out


def vidur_markdown() -> str:
    from simkv.files.calibration import calibration_for
    rows = vidur_h100_crosscheck()
    lines = ["### Vidur H100 profiles vs simkv's H100 GEMM grid (Llama-2-7B, TP 1, isolated GEMMs)", "",
             "| tokens | " + " | ".join(CROSS_OPS) + " | layer GEMMs |", "|---:|" + "---:|" * (len(CROSS_OPS) + 1)]
    for m in sorted({r[0] for r in rows}):
        rs = [r for r in rows if r[0] == m]
        ratios = [f"{100 * (v / s - 1):+.1f}%" for _, _, v, s in rs]
        total = sum(r[2] for r in rs) / sum(r[3] for r in rs)
        lines.append(f"| {m} | " + " | ".join(ratios) + f" | {100 * (total - 1):+.1f}% |")
    r_c, r_m = calibration_for("a100-80gb").ratios
    lines += ["", "Vidur / simkv - 1 per GEMM. A100 attention (stated model) scales the H100 attention tables by the "
              f"A100/H100 time ratio of the same Llama-3-8B GEMMs: {r_c:.2f} compute-bound (prefill, chunk), "
              f"{r_m:.2f} memory-bound (decode).", ""]
    return "\n".join(lines)
