"""Operator-level costs of one decoder layer of a model shard, as features of a step.

A layer runs 4 GEMMs (qkv, o, gate+up or fc1, down or fc2) over all tokens of the step, 6
elementwise kernels (2 rmsnorm, 2 residual adds, rope, the MLP activation) and one attention
kernel per prefill sequence plus one for the decode batch (the reference engine's layer; see
simkv/cost/data/README.md). Summing their isolated times over-predicts a graph-replayed layer;
`simkv.cost.calibrated` learns that gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simkv.cost.tables import CalibrationTables
from simkv.cost.operators import DTYPE_KEYS, AttentionModel, ElementwiseModel, GemmModel
from simkv.specs import ShardDims

# the calibration runs' model names -> (catalog model, tensor-parallel degree)
CALIBRATION_MODELS = {"llama3-8b": ("llama3-8b", 1), "llama2-7b": ("llama2-7b", 1), "llama3-70b-tp4": ("llama3-70b", 4)}


def calibration_shapes(tables: CalibrationTables) -> dict[str, ShardDims]:
    """The shard dims of the calibration runs' models, as the file reader resolved them."""
    if tables.shapes is None:
        raise ValueError(f"calibration tables of {tables.gpu} carry no model shapes")
    return tables.shapes


def linear_shapes(d: ShardDims) -> list[tuple[int, int]]:
    """(k, n) of the layer's GEMMs."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    up = 2 * d.intermediate if d.gated else d.intermediate
    return [(d.hidden, q + 2 * kv), (q, d.hidden), (d.hidden, up), (d.intermediate, d.hidden)]


def elementwise_widths(d: ShardDims) -> dict[str, int]:
    act = d.intermediate if d.gated else max(1, 2 * d.intermediate // 3)  # a plain activation moves 2/3 of silu_mul's bytes
    return {"rmsnorm": d.hidden, "residual_add": d.hidden, "rope": (d.heads + d.kv_heads) * d.head_dim, "silu_mul": act}


@dataclass
class OperatorSet:
    """The three operator models of one GPU, built from (optionally filtered) tables."""

    gemm: GemmModel
    attention: AttentionModel
    elementwise: ElementwiseModel

    @classmethod
    def from_tables(cls, tables: CalibrationTables, exclude_models: tuple[str, ...] = ()) -> "OperatorSet":
        shapes = {k: v for k, v in calibration_shapes(tables).items() if k not in exclude_models}
        keep = lambda cols: {k: v[~np.isin(cols["model"], exclude_models)] for k, v in cols.items()}
        dev = tables.device
        flops = {"bfloat16": dev["bf16_matmul_8192_TFLOPs"] * 1e12, "fp8_e4m3": 2 * dev["bf16_matmul_8192_TFLOPs"] * 1e12,
                 "int4_w4a16": dev["bf16_matmul_8192_TFLOPs"] * 1e12}
        gemm = GemmModel(keep(tables.gemm), flops, dev["d2d_copy_GBps_read_plus_write"] * 1e9)
        att = AttentionModel(keep(tables.attention), shapes)
        ew = ElementwiseModel(keep(tables.elementwise), {k: elementwise_widths(v) for k, v in shapes.items()})
        return cls(gemm, att, ew)


class LayerCosts:
    """Isolated-operator times of one layer of shard `d`, as functions of a step's shape."""

    def __init__(self, ops: OperatorSet, d: ShardDims, weight_dtype: str = "bf16") -> None:
        self.ops, self.d = ops, d
        self.dtype = DTYPE_KEYS[weight_dtype]
        self.head_dtype = "bfloat16" if weight_dtype == "int4" else self.dtype  # int4 checkpoints keep lm_head bf16
        self.linears = linear_shapes(d)
        self.widths = elementwise_widths(d)

    def linear(self, m) -> np.ndarray:
        return sum(self.ops.gemm.time(m, k, n, self.dtype) for k, n in self.linears)

    def elementwise(self, m) -> np.ndarray:
        ew, w = self.ops.elementwise, self.widths
        return (2 * ew.time("rmsnorm", m, w["rmsnorm"]) + 2 * ew.time("residual_add", m, w["residual_add"])
                + ew.time("rope", m, w["rope"]) + ew.time("silu_mul", m, w["silu_mul"]))

    def prefill_attention(self, new, cached) -> np.ndarray:
        return self.ops.attention.prefill_time(new, cached, self.d.heads, self.d.head_dim)

    def decode_attention(self, contexts: np.ndarray) -> float:
        return self.ops.attention.decode_time(contexts, self.d.kv_heads, self.d.head_dim) if len(contexts) else 0.0

    def lm_head(self, m) -> np.ndarray:
        m = np.asarray(m, float)
        t = self.ops.gemm.time(np.maximum(m, 1), self.d.hidden, self.d.vocab, self.head_dtype)
        return np.where(m > 0, t, 0.0)


# ---------------------------------------------------------------- the fitted features of one layer step
FEATURES = ("linear", "attention", "qkv_bytes", "elementwise_bytes", "constant")
ACT_BYTES = 2


def per_token_bytes(d: ShardDims) -> tuple[float, float]:
    """(q/k/v layout and cache-write bytes, elementwise bytes) moved per token per layer."""
    w = elementwise_widths(d)
    qkv = (d.heads + 2 * d.kv_heads) * d.head_dim * 2 * ACT_BYTES
    ew = (2 * 2 * d.hidden + 2 * 3 * d.hidden + 2 * (d.heads + d.kv_heads) * d.head_dim + 3 * w["silu_mul"]) * ACT_BYTES
    return qkv, ew


def layer_features(lc: LayerCosts, bytes_per_s: float, m: float, attention_s: float) -> np.ndarray:
    qkv, ew = per_token_bytes(lc.d)
    return np.array([float(lc.linear(m)), attention_s, m * qkv / bytes_per_s, m * ew / bytes_per_s, 1.0])
