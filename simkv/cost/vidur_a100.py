"""A100 operator models from Vidur's A100 profiles (MIT licence, simkv/cost/data/vidur/), with a
stated attention model (no parsed files here: simkv.files.calibration reads them).

- GEMMs: Vidur's `attn_pre_proj` (fused qkv), `attn_post_proj`, `mlp_up_proj` (fused gate+up) and
  `mlp_down_proj` medians for Llama-3-8B/70B and Llama-2-7B/70B at TP 1/2/4/8 (32 (k, n) shapes,
  1-32,768 tokens); other shapes (lm_head included) through the efficiency curves of
  simkv.cost.operators.
- Elementwise: Vidur's `input_layernorm` (rmsnorm), `add` (residual), `attn_rope`, `mlp_act`
  (silu_mul).
- Attention (not in Vidur's public data): the H100 attention tables times the measured A100/H100
  time ratio of the same GEMM shapes (Llama-3-8B, TP 1) — the compute-bound ratio (median over
  m >= 4,096) for prefill and chunk attention, the memory-bound ratio (m <= 16) for decode.
- Graph correction and whole-model terms: H100's, assumed to carry over (no A100 layer or model
  steps were measured).
Simplifications: the profiles do not name the A100 variant; they are used for the 40 GB card too
(its lower HBM bandwidth is not modelled, so its memory-bound steps are optimistic).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from simkv.cost.tables import CalibrationTables

VIDUR_OPS = {"attn_pre_proj": "qkv_proj", "attn_post_proj": "o_proj", "mlp_up_proj": "gate_up_proj",
             "mlp_down_proj": "down_proj"}
VIDUR_ELEMENTWISE = {"input_layernorm": "rmsnorm", "add": "residual_add", "attn_rope": "rope", "mlp_act": "silu_mul"}
# Vidur (model, TP) -> the calibration shape whose elementwise widths it measures
ELEMENTWISE_SHAPES = {("Meta-Llama-3-8B", 1): "llama3-8b", ("Llama-2-7b-hf", 1): "llama2-7b",
                      ("Meta-Llama-3-70B", 4): "llama3-70b-tp4"}


def gemm_shapes(cols: dict, tp: int) -> dict[str, tuple[int, int]]:
    heads, kv, hidden, inter = (int(cols[c][0]) for c in ("n_head", "n_kv_head", "n_embd", "n_expanded_embd"))
    hd = hidden // heads
    return {"attn_pre_proj": (hidden, (heads + 2 * kv) // tp * hd), "attn_post_proj": (heads // tp * hd, hidden),
            "mlp_up_proj": (hidden, 2 * inter // tp), "mlp_down_proj": (inter // tp, hidden)}


def vidur_tables(profiles: dict[str, dict]) -> tuple[dict, dict]:
    """(gemm, elementwise) columns in the calibration tables' layout from Vidur `mlp.csv` columns
    by model (times in seconds)."""
    g = {k: [] for k in ("model", "op", "m", "k", "n", "dtype", "s")}
    e = {k: [] for k in ("model", "op", "m", "s")}
    for model, cols in profiles.items():
        for tp in np.unique(cols["num_tensor_parallel_workers"]).astype(int):
            sel = cols["num_tensor_parallel_workers"] == tp
            m = cols["num_tokens"][sel]
            for vop, (k, n) in gemm_shapes(cols, tp).items():
                g["model"] += [f"vidur:{model}:tp{tp}"] * len(m)
                g["op"] += [VIDUR_OPS[vop]] * len(m)
                g["m"] += list(m)
                g["k"] += [k] * len(m)
                g["n"] += [n] * len(m)
                g["dtype"] += ["bfloat16"] * len(m)
                g["s"] += list(cols[f"time_stats.{vop}.median"][sel] / 1e3)
            shape = ELEMENTWISE_SHAPES.get((model, int(tp)))
            if shape:
                for vop, op in VIDUR_ELEMENTWISE.items():
                    e["model"] += [shape] * len(m)
                    e["op"] += [op] * len(m)
                    e["m"] += list(m)
                    e["s"] += list(cols[f"time_stats.{vop}.median"][sel] / 1e3)
    text = {"model", "op", "dtype"}
    return ({k: np.array(v) if k in text else np.array(v, float) for k, v in g.items()},
            {k: np.array(v) if k in text else np.array(v, float) for k, v in e.items()})


def gemm_ratios(a100_gemm: dict, h100_gemm: dict) -> tuple[float, float]:
    """(compute-bound, memory-bound) A100/H100 time ratios of the Llama-3-8B TP-1 layer GEMMs."""
    from simkv.cost.curves import LogCurve
    compute, memory = [], []
    for op in VIDUR_OPS.values():
        a = (a100_gemm["model"] == "vidur:Meta-Llama-3-8B:tp1") & (a100_gemm["op"] == op)
        h = (h100_gemm["model"] == "llama3-8b") & (h100_gemm["op"] == op) & (h100_gemm["dtype"] == "bfloat16")
        ca, ch = LogCurve(a100_gemm["m"][a], a100_gemm["s"][a]), LogCurve(h100_gemm["m"][h], h100_gemm["s"][h])
        big = np.array([4096.0, 8192.0, 16384.0])
        small = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
        compute += list(ca(big) / ch(big))
        memory += list(ca(small) / ch(small))
    return float(np.median(compute)), float(np.median(memory))


def a100_calibration(gpu: str, hbm_gbps: float, tflops: float, profiles: dict[str, dict],
                     h100_tables: CalibrationTables, h100_cal, allreduce=None):
    """A Calibration for an A100 card from Vidur's profiles and the H100 measurements."""
    from simkv.cost.layer import OperatorSet
    gemm, ew = vidur_tables(profiles)
    r_compute, r_memory = gemm_ratios(gemm, h100_tables.gemm)
    att = dict(h100_tables.attention)
    scale = np.where(att["kind"] == "decode", r_memory, r_compute)
    att["s"] = att["s"] * scale
    hd = h100_tables.device
    # ceilings: datasheet x H100's measured/datasheet ratio (only ratios and the byte terms use them)
    copy = hbm_gbps * hd["d2d_copy_GBps_read_plus_write"] / 3350.0
    device = {"name": gpu, "d2d_copy_GBps_read_plus_write": copy, "bf16_matmul_8192_TFLOPs": tflops * hd["bf16_matmul_8192_TFLOPs"] / 989.0}
    tables = CalibrationTables(gpu, device, gemm, ew, att, {}, None, h100_tables.shapes)
    ops = OperatorSet.from_tables(tables)
    notes = {
        "gemm": "measured: Vidur A100 operator profiles (MIT, microsoft/vidur 7d47513; Llama-3-8B/70B, Llama-2-7B/70B at "
                f"TP 1-8; other shapes by roofline efficiency) x H100's fitted graph factor {h100_cal.coef[0]:.3f} (assumed)",
        "lm_head": "measured: Vidur A100 GEMM profiles via roofline efficiency (no lm_head measured) x H100's graph "
                   "factor (assumed)",
        "attention_prefill": f"assumed: H100 measured prefill/chunk attention x {r_compute:.2f} (A100/H100 time ratio of "
                             "the same compute-bound GEMMs, Vidur vs simkv tables); no A100 attention measured",
        "attention_decode": f"assumed: H100 measured decode attention x {r_memory:.2f} (A100/H100 time ratio of the same "
                            "memory-bound GEMMs at m <= 16); no A100 attention measured",
        "elementwise": "measured: Vidur A100 elementwise profiles; byte terms at the datasheet HBM rate x H100's "
                       "measured/datasheet ratio, H100's coefficients (assumed)",
        "layer_correction": "assumed: H100's layer correction (no A100 layer steps measured)",
        "whole_model": "assumed: H100's whole-model terms (no A100 whole-model steps measured)",
    }
    if gpu != "a100-80gb":
        notes["gemm"] += "; profiles of an A100 (variant not stated) used for this card, its HBM bandwidth not modelled"
    return replace(h100_cal, gpu=gpu, ops=ops, bytes_per_s=copy * 1e9, allreduce=allreduce, notes=notes,
                   ratios=(r_compute, r_memory))
