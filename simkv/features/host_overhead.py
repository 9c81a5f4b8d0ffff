"""Host (CPU) time per engine step that the GPU waits for: scheduling, input preparation,
sampling bookkeeping, detokenisation. The model is a fixed term plus a per-sequence term,

    host_s(step) = engine.host_overhead_s + engine.host_per_seq_s x sequences in the step,

added to every step's GPU time (it is the part *not* overlapped with the GPU). Unset fields take
the preset's defaults below. Where an engine overlaps its CPU work with the GPU by design (a
cited, documented mechanism), the default is 0 with that citation; where no public per-step
number exists it is 0 and labelled "assumed 0". Fit your own from a step log with
`simkv fit-host-overhead STEPLOG.csv` (fit_host_overhead below).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SGLANG_BLOG = ("LMSYS blog 2024-12-04 'SGLang v0.4: zero-overhead batch scheduler' (CPU scheduling of step n+1 "
               "overlapped with the GPU's step n; Nsight profile without GPU idle gaps)")
TRTLLM_DOC = ("TensorRT-LLM docs, features/overlap-scheduler ('Enabled by default': CPU work of step n overlapped "
              "with the GPU computation of step n+1)")
NOT_MEASURED = "no public per-step number (fixed or per-sequence) for this engine"

# preset -> (fixed s per step, s per sequence, source)
DEFAULTS: dict[str, tuple[float, float, str]] = {
    "sglang": (0.0, 0.0, "assumed 0, as published: " + SGLANG_BLOG),
    "trtllm": (0.0, 0.0, "assumed 0, as published: " + TRTLLM_DOC),
    "vllm-v1": (0.0, 0.0, "assumed 0: " + NOT_MEASURED + "; vLLM V1 (blog 2025-01-27) runs the scheduler in "
                "its own EngineCore process and async scheduling overlaps it with the GPU, so the visible "
                "remainder is small but unquantified"),
}


@dataclass(frozen=True)
class HostOverhead:
    fixed_s: float
    per_seq_s: float
    source: str

    def seconds(self, num_seqs) -> float:
        return self.fixed_s + self.per_seq_s * num_seqs


def resolve(engine, preset: str | None = None) -> HostOverhead:
    """The host model of a (scenario) engine: its own fields where set, else the preset's."""
    preset = preset or engine.preset
    d_fixed, d_seq, d_src = DEFAULTS.get(preset, (0.0, 0.0, f"assumed 0: {NOT_MEASURED}"))
    own_fixed = "host_overhead_s" in engine.model_fields_set
    own_seq = getattr(engine, "host_per_seq_s", None) is not None
    fixed = float(engine.host_overhead_s) if own_fixed else d_fixed
    per_seq = float(engine.host_per_seq_s) if own_seq else d_seq
    if own_fixed or own_seq:
        src = (f"assumed: engine.host_overhead_s {fixed:g} s + host_per_seq_s {per_seq:g} s x sequences per step "
               "(the scenario's; fit them with `simkv fit-host-overhead`)"
               + ("" if own_fixed and own_seq else f" (the unset term from the {preset} preset: {d_src})"))
    else:
        src = f"{d_src} ({preset} preset: {fixed:g} s + {per_seq:g} s x sequences per step)"
    return HostOverhead(fixed, per_seq, src)


@dataclass(frozen=True)
class HostFit:
    fixed_s: float
    per_seq_s: float
    rows: int
    r2: float
    rel_err_median: float

    def describe(self) -> str:
        return (f"fixed {self.fixed_s * 1e3:.4g} ms + {self.per_seq_s * 1e6:.4g} us per sequence "
                f"({self.rows} steps, R^2 {self.r2:.3f}, median |relative error| {100 * self.rel_err_median:.1f}%)")


def fit_host_overhead(num_seqs: np.ndarray, host_s: np.ndarray) -> HostFit:
    """Non-negative least squares of host_s = fixed + per_seq x num_seqs."""
    from simkv.cost import exact_fit
    n, y = np.asarray(num_seqs, dtype=float), np.asarray(host_s, dtype=float)
    x = np.column_stack([np.ones(len(n)), n])
    coef = exact_fit.nnls(x, y)   # the same on every CPU
    pred = exact_fit.matvec(x, coef)
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    rel = np.abs(pred - y) / np.maximum(np.abs(y), 1e-12)
    return HostFit(float(coef[0]), float(coef[1]), len(y), r2, float(np.median(rel)))
