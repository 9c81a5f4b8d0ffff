"""`simkv step-time`: read a CSV of step shapes, add predicted times (an I/O edge)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from simkv.studies.step_time import cost_model, plan_from_shape
from simkv.errors import SimkvError

REQUIRED = ("prefill_seqs", "prefill_len", "decode_batch", "decode_ctx")


def predict_table(path: Path, *, gpu: str, model: str, tensor_parallel: int = 1, dtype: str = "bf16",
                  cost: str = "calibrated", gpus: dict | None = None) -> str:
    """The CSV at `path` with predicted_layer_ms (one decoder layer) and predicted_ms (layers x
    layer + lm_head on the sampled tokens; `layers` column overrides the model's layer count;
    `tokens_per_seq`, for decode rows, is the tokens each sequence computes: k + 1 to verify k
    speculative proposals, 1 (the default) for an ordinary decode)."""
    if not path.exists():
        raise SimkvError("file not found", file=str(path), fix="give a CSV with columns " + ",".join(REQUIRED))
    rows = list(csv.DictReader(path.read_text().splitlines()))
    if not rows:
        raise SimkvError("no rows", file=str(path), fix="add one step shape per line under the header")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise SimkvError(f"missing column(s) {', '.join(missing)}", file=str(path),
                         fix="the header must be " + ",".join(REQUIRED) + "[,layers][,tokens_per_seq]")
    models: dict = {}
    out = io.StringIO()
    fields = list(rows[0]) + ["predicted_layer_ms", "predicted_ms"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for line, row in enumerate(rows, start=2):
        try:
            shape = [int(float(row[c])) for c in REQUIRED]
            layers = int(float(row["layers"])) if row.get("layers") not in (None, "") else None
            per_seq = int(float(row["tokens_per_seq"])) if row.get("tokens_per_seq") not in (None, "") else 1
        except ValueError:
            raise SimkvError(f"line {line}: not a whole number in {row}", file=str(path), fix="use integers") from None
        if min(shape) < 0 or (shape[0] > 0) != (shape[1] > 0) or (shape[2] > 0) != (shape[3] > 0) or not any(shape):
            raise SimkvError(f"line {line}: {dict(zip(REQUIRED, shape))} is not a step", file=str(path),
                             fix="prefill_seqs and prefill_len are both 0 or both positive; same for decode_batch and decode_ctx")
        if per_seq < 1 or (per_seq > 1 and shape[2] == 0):
            raise SimkvError(f"line {line}: tokens_per_seq {per_seq} needs decode rows and must be >= 1", file=str(path),
                             fix="1 for an ordinary decode, k + 1 to verify k speculative tokens per sequence")
        if layers not in models:
            models[layers] = cost_model(gpu, model, tensor_parallel=tensor_parallel, dtype=dtype, layers=layers, cost=cost,
                                        gpus=gpus)[0]
        m = models[layers]
        plan = plan_from_shape(*shape, tokens_per_seq=per_seq)
        row["predicted_layer_ms"] = f"{m.layer_seconds(plan) * 1e3:.5g}"
        row["predicted_ms"] = f"{m.seconds(plan) * 1e3:.5g}"
        writer.writerow(row)
    return out.getvalue()
