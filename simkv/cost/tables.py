"""The parsed calibration measurements of one GPU (pure data: `simkv.files.calibration` reads
the files and fills this; the cost models only take it)."""

from __future__ import annotations

from dataclasses import dataclass

from simkv.specs import ShardDims


@dataclass(frozen=True)
class CalibrationTables:
    """One GPU's measurements as column arrays (times in seconds)."""

    gpu: str
    device: dict
    gemm: dict           # model, op, m, k, n, dtype, s
    elementwise: dict    # model, op, m, s
    attention: dict      # model, kind, batch, q_len, kv_len, s
    layer_steps: dict    # model, layers, kind, prefill_seqs, prefill_len, decode_batch, decode_ctx, s
    model_steps: dict | None = None  # the same columns for whole-model steps (None when not measured)
    shapes: dict[str, ShardDims] | None = None  # the calibration runs' models (names in the tables) -> shard dims
