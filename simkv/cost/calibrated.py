"""Calibrated step time: isolated-operator models corrected to graph-replayed layers.

Models: one decoder layer of a step with m tokens costs
    c_linear * GEMMs(m) + c_attention * attention(plan) + c_qkv * qkv_bytes(m) / BW
      + c_elementwise * elementwise_bytes(m) / BW + c_0
where GEMMs and attention are the operator models' isolated times (simkv.cost.operators), and the
two byte terms carry the memory traffic a graph does and isolated tables miss or overstate (the
q/k/v layout copies and cache writes; elementwise kernels whose inputs are still in L2). The
non-negative coefficients are fitted, in relative error, on the GPU's graph-replayed
`layer_steps.csv`. A whole step is layers x layer + lm_head on the sampled tokens (a GEMM with the
same graph factor as the layer's GEMMs) + the whole-model terms fitted on `model_steps.csv`
(simkv.cost.whole_model: graph overhead paid once per step, activation traffic per token)
+ two all-reduces per layer when tensor_parallel > 1
(Vidur's NCCL profile of the GPU's NVSwitch node, simkv.cost.collectives; NVLink roofline where
none exists) + the engine's host overhead per step.
Mixture-of-experts layers replace the MLP GEMMs by simkv.cost.moe's expert GEMMs (measured grouped
GEMMs where the shape was measured) with the same graph factor; int4 (W4A16) GEMMs are a stated
model over the bf16 tables (simkv.cost.operators), labelled "not measured" in sources().
Simplifications: fp8 reuses the bf16 layer correction with fp8
GEMM times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy._core.multiarray import interp as _interp

from simkv import compiled
from simkv.cost import exact_fit
from simkv.cost.tables import CalibrationTables
from simkv.cost.layer import (ACT_BYTES, FEATURES, LayerCosts, OperatorSet, calibration_shapes,  # noqa: F401
                              elementwise_widths, layer_features, per_token_bytes)
from simkv.cost.offload import OffloadPricing, kv_load_seconds
from simkv.cost.whole_model import whole_model_coef
from simkv.cost.moe import MoeGemmTable, MoeLayer, moe_shard, moe_sources
from simkv.sched.base import StepPlan
from simkv.specs import DTYPE_BYTES, GpuSpec, ModelSpec

_add_reduce = np.add.reduce   # ndarray.sum without its Python wrapper

def layer_step_features(tables: CalibrationTables, ops: OperatorSet, rows: np.ndarray | None = None) -> np.ndarray:
    """Feature matrix of the measured single-layer steps (all rows, or the boolean `rows`)."""
    L, shapes = tables.layer_steps, calibration_shapes(tables)
    bw = tables.device["d2d_copy_GBps_read_plus_write"] * 1e9
    idx = np.flatnonzero(rows) if rows is not None else np.arange(len(L["s"]))
    out = []
    for i in idx:
        lc = LayerCosts(ops, shapes[str(L["model"][i])])
        ps, pl = int(L["prefill_seqs"][i]), int(L["prefill_len"][i])
        b, c = int(L["decode_batch"][i]), int(L["decode_ctx"][i])
        att = ps * float(lc.prefill_attention(pl, 0)) if ps else 0.0
        att += lc.decode_attention(np.full(b, c)) if b else 0.0
        out.append(layer_features(lc, bw, ps * pl + b, att))
    return np.array(out)


def fit_correction(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the relative error of x @ coef against y (exactly,
    so the same on every CPU: simkv.cost.exact_fit)."""
    return exact_fit.nnls(x / y[:, None], np.ones(len(y)))


@dataclass(frozen=True)
class Calibration:
    """A GPU's operator models and fitted graph correction."""

    gpu: str
    ops: OperatorSet
    coef: np.ndarray
    bytes_per_s: float
    whole: np.ndarray | None = None  # (g, a) of simkv.cost.whole_model; None: not measured (zeros)
    allreduce: object | None = None  # simkv.cost.collectives.CollectiveModel of the GPU's node; None: roofline
    notes: dict | None = None        # source texts replacing the default ones (e.g. simkv.cost.vidur_a100)
    ratios: tuple | None = None      # A100/H100 (compute, memory) time ratios the attention is scaled by

    @classmethod
    def fit(cls, tables: CalibrationTables, exclude_models: tuple[str, ...] = ()) -> "Calibration":
        ops = OperatorSet.from_tables(tables, exclude_models)
        keep = ~np.isin(tables.layer_steps["model"], exclude_models)
        x = layer_step_features(tables, ops, keep)
        coef = fit_correction(x, tables.layer_steps["s"][keep])
        bw = tables.device["d2d_copy_GBps_read_plus_write"] * 1e9
        whole = None
        if tables.model_steps is not None:
            rows = ~np.isin(tables.model_steps["model"], exclude_models)
            whole = whole_model_coef(tables, ops, coef, bw, rows) if rows.any() else None
        return cls(tables.gpu, ops, coef, bw, whole)


class CalibratedCost(OffloadPricing):
    """StepCost from a GPU's calibration for one model shard (see module docstring)."""

    decode_attention_scale = 1.0   # block-size term (simkv.cost.block_size), set by the builder
    host_per_seq_s = 0.0           # host time per sequence in a step (simkv.features.host_overhead), set by the builder
    host_source: str | None = None

    def __init__(self, calibration: Calibration, model: ModelSpec, gpu: GpuSpec, *, tensor_parallel: int = 1,
                 weight_dtype: str = "bf16", kv_dtype: str = "bf16", host_overhead_s: float = 0.0,
                 max_tokens: int = 16384, moe_table: MoeGemmTable | None = None, expert_parallel: bool = False,
                 expert_imbalance: float = 1.0) -> None:
        d = model.shard(tensor_parallel)
        self.cal, self.d = calibration, d
        self.gpu, self.weight_dtype, self.kv_dtype = gpu, weight_dtype, kv_dtype
        self.lc = LayerCosts(calibration.ops, d, weight_dtype)
        self.layers = d.num_layers
        self.tp = tensor_parallel
        self.host_overhead_s = host_overhead_s
        self.link_bytes_per_s = gpu.nvlink_gbps * 1e9
        ar = calibration.allreduce
        self.allreduce = ar if tensor_parallel > 1 and ar is not None and ar.covers(tensor_parallel) else None
        self.kv_bytes_per_token = model.kv_bytes_per_token(kv_dtype, tensor_parallel)
        self.d2h_bytes_per_s, self.h2d_bytes_per_s = gpu.device_to_host_bps, gpu.host_to_device_bps
        self.kv_scale = DTYPE_BYTES[kv_dtype] / 2  # decode attention reads KV bytes
        c_lin, self.c_att, c_qkv, c_ew, c0 = calibration.coef
        qkv, ew = per_token_bytes(d)
        self._per_token = (c_qkv * qkv + c_ew * ew) / calibration.bytes_per_s
        self._c_lin, self._c0 = c_lin, c0
        g, a = calibration.whole if calibration.whole is not None else (0.0, 0.0)
        self._graph_saving_s, self._whole_per_token_s = float(g), float(a) * ew / calibration.bytes_per_s
        self.moe, self.moe_layers = None, 0
        if model.moe is not None:  # MoE layers: attention GEMMs + experts (simkv.cost.moe), elementwise at the active width
            if moe_table is None:
                raise ValueError(f"no moe_gemm.csv measurements for {calibration.gpu}: a mixture-of-experts model needs them")
            self.moe = MoeLayer(moe_table, calibration.ops.gemm, model, tensor_parallel, dtype=self.lc.dtype,
                                expert_parallel=expert_parallel, imbalance=expert_imbalance)
            self.moe_layers = model.num_moe_layers
            mqkv, mew = per_token_bytes(moe_shard(d, self.moe))
            self._per_token_moe = (c_qkv * mqkv + c_ew * mew) / calibration.bytes_per_s
        self._fixed = np.zeros(0)
        self._grow_fixed(max_tokens)
        tokens = np.arange(0, max_tokens + 1)
        self._prefill = np.where(tokens > 0, self.lc.prefill_attention(np.maximum(tokens, 1), 0), 0.0)
        self._lm_head = c_lin * self.lc.lm_head(np.arange(0, 1025))
        self._decode_curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------ provenance
    def sources(self) -> dict[str, str]:
        """Where each cost component's numbers come from: measured, fitted, roofline or assumed."""
        return {**self._default_sources(), **(self.cal.notes or {}), **self.offload_sources()}

    def _default_sources(self) -> dict[str, str]:
        g, gemm = self.cal.gpu, self.cal.ops.gemm
        dtype = self.lc.dtype
        measured = lambda shapes: all((k, n, dtype) in gemm.curves for k, n in shapes)
        tables = f"measured: {g} GEMM tables ({dtype}"
        scaled = ", unmeasured shapes scaled from the measured ones by roofline efficiency)"
        c_lin, c_att, c_qkv, c_ew, c0 = self.cal.coef
        heads = "" if self.d.head_dim == 128 else f"; head_dim {self.d.head_dim} scaled by bytes from 128"
        return {
            "gemm": tables + (")" if measured(self.lc.linears) else scaled) + f" x fitted graph factor {c_lin:.3f}",
            "lm_head": tables + (")" if measured([(self.d.hidden, self.d.vocab)]) else scaled)
                       + f" x fitted graph factor {c_lin:.3f}",
            "attention_prefill": f"measured: {g} attention tables (causal prefill; chunks against cached context "
                                 f"from the measured chunk times{heads}) x fitted factor {c_att:.3f}",
            "attention_decode": f"measured: {g} attention tables (decode, by sequences x KV heads and context{heads}) "
                                f"x fitted factor {c_att:.3f}",
            "elementwise": f"fitted: bytes moved per token / {g} measured copy rate, coefficients {c_qkv:.3f} (q/k/v "
                           f"layout, cache writes) and {c_ew:.3f} (elementwise) fitted on {g} layer_steps.csv",
            "layer_correction": f"fitted: non-negative least squares on {g} graph-replayed layer_steps.csv "
                                f"(constant {c0 * 1e6:.1f} us per layer)",
            "whole_model": self._whole_source(),
            "fp8_weights": (f"measured: {g} fp8 GEMM tables; the layer correction fitted on bf16 layers is assumed "
                            "to carry over (not measured)") if self.weight_dtype == "fp8" else f"n/a ({self.weight_dtype} weights)",
            "kv_fp8_attention": ("assumed (not measured): an fp8 cache's decode attention reads half the bytes, "
                                 "priced as the measured bf16 kernel at half the context; prefill attention as bf16; "
                                 "capacity: 1 byte per element") if self.kv_scale != 1 else f"n/a ({self.kv_dtype} KV cache)",
            "tp_allreduce": (self.allreduce.describe(self.tp) + ", two per layer of tokens x hidden x 2 bytes"
                             if self.allreduce is not None else _allreduce_source(self.tp, self.link_bytes_per_s)),
            "swap": swap_source(self.gpu),
            "host_overhead": self.host_source or host_overhead_source(self.host_overhead_s),
            **self._quant_moe_sources(c_lin),
        }

    def _whole_source(self) -> str:
        g = self.cal.gpu
        if self.cal.whole is None:
            return (f"assumed 0: no whole-model steps measured for {g} (model_steps.csv); a step is layers x one "
                    "graph-replayed layer + lm_head")
        sv, a = self.cal.whole
        return (f"fitted: bounded least squares on {g} model_steps.csv (whole llama3-8b forwards in one CUDA graph): "
                f"{sv * 1e6:.1f} us per layer of single-layer graph overhead paid once per step, not per layer; "
                f"+{a:.2f} x the layer's elementwise bytes per token of activation traffic per layer")

    def whole_model_s(self, m: int) -> float:
        """What the whole forward adds (+) or saves (-) over layers x one layer, for m tokens
        (simkv.cost.whole_model)."""
        return self.layers * self._whole_per_token_s * m - (self.layers - 1) * self._graph_saving_s

    def _quant_moe_sources(self, c_lin: float) -> dict[str, str]:
        out = {"int4_weights": (f"stated model (not measured): W4A16 GEMMs at the {self.cal.gpu} bf16 GEMM tables' "
                                "efficiency over a roofline reading 4-bit weights plus group-128 scales "
                                "(0.52 bytes per weight) at the bf16 tensor-core rate; lm_head stays bf16")
               if self.weight_dtype == "int4" else f"n/a ({self.weight_dtype} weights)"}
        if self.moe is not None:
            out.update(moe_sources(self.moe, self.cal.gpu, c_lin, self.link_bytes_per_s / 1e9))
        return out

    # ------------------------------------------------------------ precomputed parts
    def _grow_fixed(self, m_max: int) -> None:
        """fixed[m]: everything of a layer but attention, for m = 0..m_max tokens, plus all-reduce."""
        m = np.arange(0, m_max + 1, dtype=float)
        lin = self.lc.linear(np.maximum(m, 1))
        layer = self._c_lin * lin + self._per_token * m + self._c0
        if self.allreduce is not None:
            allreduce = self.allreduce.seconds(m * self.d.hidden * ACT_BYTES, self.tp)
        else:
            allreduce = 2.0 * (self.tp - 1) / self.tp * m * self.d.hidden * ACT_BYTES / self.link_bytes_per_s
        if self.tp > 1:
            layer = layer + 2 * allreduce
        if self.moe is not None:  # the per-layer average over dense and MoE layers
            mm = np.maximum(m, 1)
            attn = sum(self.lc.ops.gemm.time(mm, k, n, self.lc.dtype) for k, n in self.lc.linears[:2])
            moe = self._c_lin * (attn + self.moe.linear(mm)) + self._per_token_moe * m + self._c0
            if self.tp > 1:  # expert parallelism: one all-reduce (attention) + dispatch and combine
                moe = moe + (2 * allreduce if self.moe.ep == 1 else
                             allreduce + self.moe.all_to_all_bytes(m) / self.link_bytes_per_s)
            layer = ((self.layers - self.moe_layers) * layer + self.moe_layers * moe) / self.layers
        self._fixed = np.where(m > 0, layer, 0.0)

    def layer_fixed_s(self, m: int) -> float:
        if m >= len(self._fixed):
            self._grow_fixed(max(m, 2 * len(self._fixed)))
        return float(self._fixed[m])

    def lm_head_s(self, num_sampled: int) -> float:
        if num_sampled < len(self._lm_head):
            return float(self._lm_head[num_sampled])
        return float(self._c_lin * self.lc.lm_head(num_sampled))

    def _decode_curve(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        curve = self._decode_curves.get(batch)
        if curve is None:
            knots, secs = self.cal.ops.attention.decode_curve(batch * self.d.kv_heads)
            curve = self._decode_curves[batch] = (knots * 128 / (self.d.head_dim * self.kv_scale), secs / batch)
        return curve

    def use_compiled_attention(self, kernels) -> None:
        """Sum decode attention with simkv.cost.attention_kernels (`kernels`; None: with numpy). The
        same numbers either way (simkv.compiled)."""
        self._att_kernels = kernels

    _att_kernels = None

    def __getstate__(self) -> dict:   # copies and pickles: the kernel module is found again
        state = dict(self.__dict__)
        state["_att_kernels"] = state.get("_att_kernels") is not None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._att_kernels = compiled.kernels("simkv.cost.attention_kernels") if state["_att_kernels"] else None

    def decode_attention_s(self, contexts: np.ndarray) -> float:
        """One decode-attention kernel: the sum over sequences of each one's share."""
        if not len(contexts):
            return 0.0
        knots, share = self._decode_curve(len(contexts))
        if self._att_kernels is not None:
            return self.decode_attention_scale * float(self._att_kernels.step_sum(contexts, knots, share))
        # np.interp's and ndarray.sum's own functions, without their Python wrappers (the same numbers)
        return self.decode_attention_scale * float(_add_reduce(_interp(contexts, knots, share)))

    def prefill_attention_s(self, new: np.ndarray, ctx: np.ndarray) -> float:
        """Causal attention of each prefill (a table lookup when nothing is cached)."""
        if not len(new):
            return 0.0
        if len(new) == 1:
            n, c = int(new[0]), int(ctx[0])
            if n == c and n < len(self._prefill):
                return float(self._prefill[n])
        elif (new == ctx).all() and new.max() < len(self._prefill):
            return float(self._prefill[new].sum())
        return float(self.lc.prefill_attention(new, ctx - new).sum())

    # ------------------------------------------------------------ StepCost
    def layer_seconds(self, plan: StepPlan) -> float:
        return self._layer_seconds(plan, plan.num_batched_tokens)

    def _layer_seconds(self, plan: StepPlan, m: int) -> float:
        if m == 0:
            return 0.0
        att = self.prefill_attention_s(plan.prefill_new, plan.prefill_ctx) + self.decode_attention_s(plan.decode_ctx)
        return self.layer_fixed_s(m) + self.c_att * att

    def seconds(self, plan: StepPlan) -> float:
        moved = plan.swap_out_tokens or plan.swap_in_tokens or plan.kv_load_host_tokens or plan.kv_load_ssd_tokens
        swap = self.transfer_seconds(plan) if moved else 0.0
        m = plan.num_batched_tokens   # computed once (a property summing the prefill tokens)
        if m == 0:
            return self.host_overhead_s + swap
        return (self.layers * self._layer_seconds(plan, m) + self.whole_model_s(m)
                + self.lm_head_s(plan.num_sampled) + self.host_overhead_s + self.host_per_seq_s * plan.num_seqs + swap)

    def transfer_seconds(self, plan: StepPlan) -> float:
        """Swap traffic of the step at the measured pinned host<->device rates (not overlapped),
        plus prefix blocks loaded from offload tiers (simkv.cost.offload)."""
        load = kv_load_seconds(self, plan)
        if not (plan.swap_out_tokens or plan.swap_in_tokens):
            return load
        return self.kv_bytes_per_token * (plan.swap_out_tokens / self.d2h_bytes_per_s
                                          + plan.swap_in_tokens / self.h2d_bytes_per_s) + load

    def decode_run_seconds(self, decode_ctx: np.ndarray, num_steps: int) -> np.ndarray:
        n = len(decode_ctx)
        knots, share = self._decode_curve(n)
        if self._att_kernels is not None and n:
            sums = np.empty(num_steps)
            self._att_kernels.run_sums(decode_ctx, num_steps, knots, share, sums)
            att = self.decode_attention_scale * sums
        else:
            ctx = decode_ctx[None, :] + np.arange(num_steps)[:, None]
            att = self.decode_attention_scale * _add_reduce(_interp(ctx, knots, share), axis=1)   # np.interp(...).sum(axis=1)
        fixed = self.layer_fixed_s(n)
        return (self.layers * (fixed + self.c_att * att) + self.whole_model_s(n) + self.lm_head_s(n) + self.host_overhead_s
                + self.host_per_seq_s * n)

    def swap_seconds(self, num_tokens: int, to_host: bool) -> float:
        """Moving `num_tokens` of KV between GPU and host memory at the measured pinned-copy rate."""
        rate = self.d2h_bytes_per_s if to_host else self.h2d_bytes_per_s
        return num_tokens * self.kv_bytes_per_token / rate


def _allreduce_source(tp: int, link_bytes_per_s: float) -> str:
    if tp == 1:
        return "n/a (tensor_parallel 1)"
    return f"roofline: ring all-reduce over NVLink at {link_bytes_per_s / 1e9:g} GB/s, two per layer (not calibrated)"


def swap_source(gpu: GpuSpec) -> str:
    if gpu.measured is not None:
        return (f"measured: pinned host<->device copy {gpu.measured.d2h_gbps:.1f} / {gpu.measured.h2d_gbps:.1f} GB/s "
                f"(d2h / h2d; {gpu.description} measured ceilings, device.json)")
    return f"roofline: datasheet host link {gpu.host_link_gbps:g} GB/s per direction (not measured)"


def host_overhead_source(seconds: float) -> str:
    if seconds == 0:
        return "assumed 0 (engine.host_overhead_s)"
    return f"assumed {seconds:g} s per step (engine.host_overhead_s, not measured)"
