"""Prediction intervals (`simkv run --intervals N`, `run.intervals: N`): the headline metrics
re-simulated N times, each replicate with

  * another request stream (run.seed + i): seed-to-seed variation, and
  * every step's cost multiplied by a factor resampled from the cost model's held-out errors
    (measured / predicted of the calibration rows left out of the fit): one factor per step kind
    (decode-only, prefill-only, mixed) per replicate, drawn from that kind's residuals, because a
    cost model's error is systematic by shape, not independent from step to step.

Residuals: the calibrated model's leave-one-out errors on the GPU's whole-model steps
(model_steps.csv; layer_steps.csv where none), as `simkv cost report` computes them; a user step
table's leave-one-row-out interpolation errors; none for the roofline (then the interval holds
seed variation only, and says so). Reported: [p5, p95] over the base run and the replicates.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from simkv.sched.base import StepPlan

KINDS = ("decode", "prefill", "mixed")
HEADLINE = (("throughput", "requests_per_s"), ("throughput", "output_tokens_per_s"),
            ("latency_s", "ttft", "p50"), ("latency_s", "ttft", "p99"), ("latency_s", "tbt", "p50"),
            ("latency_s", "tbt", "p99"), ("latency_s", "tpot", "p50"), ("latency_s", "e2e", "p50"),
            ("latency_s", "e2e", "p99"))
MAX_INTERVALS = 1000


def step_kind(plan: StepPlan) -> str:
    if not len(plan.prefill_ids):
        return "decode"
    return "mixed" if len(plan.decode_ids) else "prefill"


class ScaledCost:
    """A cost model with each step kind's time multiplied by a fixed factor."""

    def __init__(self, cost, factors: dict[str, float]) -> None:
        self.cost, self.factors = cost, factors

    def __getattr__(self, name):
        return getattr(self.cost, name)

    def seconds(self, plan: StepPlan) -> float:
        return self.cost.seconds(plan) * self.factors[step_kind(plan)]

    def decode_run_seconds(self, decode_ctx: np.ndarray, num_steps: int) -> np.ndarray:
        return self.cost.decode_run_seconds(decode_ctx, num_steps) * self.factors["decode"]


# ------------------------------------------------------------------ residuals

@lru_cache(maxsize=8)
def calibration_residuals(gpu: str) -> tuple[dict, str] | None:
    """({kind: measured/predicted held-out ratios}, description) of a GPU's shipped calibration."""
    from simkv.files.calibration import available_gpus, load_tables
    from simkv.cost.calibrated import fit_correction, layer_step_features
    from simkv.cost.exact_fit import dot
    from simkv.cost.layer import OperatorSet
    if gpu not in available_gpus():
        return None
    tables = load_tables(gpu)
    ops = OperatorSet.from_tables(tables)
    L = tables.layer_steps
    x, y = layer_step_features(tables, ops), L["s"]
    coef = fit_correction(x, y)
    M = tables.model_steps
    if M is not None and len(M["s"]) >= 3:
        from simkv.cost.whole_model import composed_and_features, fit_whole_model
        bw = tables.device["d2d_copy_GBps_read_plus_write"] * 1e9
        composed, feats = composed_and_features(tables, ops, coef, bw)
        ym, pred = M["s"], np.empty(len(M["s"]))
        for i in range(len(ym)):
            keep = np.arange(len(ym)) != i
            pred[i] = composed[i] + dot(feats[i], fit_whole_model(composed[keep], feats[keep], ym[keep], float(coef[4])))
        ratios, kinds = ym / pred, M["kind"]
        what = f"leave-one-out errors of the {gpu} whole-model steps (model_steps.csv, {len(ym)} rows)"
    else:
        pred = np.empty(len(y))
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            pred[i] = dot(x[i], fit_correction(x[keep], y[keep]))
        ratios, kinds = y / pred, L["kind"]
        what = f"leave-one-out errors of the {gpu} graph-replayed layers (layer_steps.csv, {len(y)} rows)"
    return _by_kind(ratios, np.asarray(kinds).astype(str)), what


def table_residuals(cost) -> tuple[dict, str]:
    """Leave-one-row-out errors of a user step table's interpolation."""
    from simkv.cost.step_table import StepTableCost
    rows = cost.rows
    ratios, kinds = [], []
    for i in range(len(rows)):
        keep = np.arange(len(rows)) != i
        sub = type(rows)(*(getattr(rows, f)[keep] for f in ("prefill_seqs", "prefill_len", "decode_batch",
                                                             "decode_ctx", "tokens_per_seq", "ms")), origin=rows.origin)
        try:
            other = StepTableCost(sub, cost.base, host_in_table=True)
        except Exception:   # the row was the table's only one of its kind
            continue
        plan = _row_plan(rows, i)
        t, _ = other.table_seconds(plan)
        if t > 0:
            ratios.append(rows.ms[i] / 1e3 / t)
            kinds.append(step_kind(plan))
    return _by_kind(np.array(ratios), np.array(kinds, dtype=str)), \
        f"leave-one-row-out interpolation errors of the step table ({len(ratios)} rows)"


def _row_plan(rows, i: int) -> StepPlan:
    ps, b = int(rows.prefill_seqs[i]), int(rows.decode_batch[i])
    new = np.full(ps, int(rows.tokens_per_seq[i]), dtype=np.int64)
    return StepPlan(decode_ids=np.arange(b), decode_ctx=np.full(b, int(rows.decode_ctx[i]), dtype=np.int64),
                    prefill_ids=np.arange(b, b + ps), prefill_new=new,
                    prefill_ctx=np.full(ps, int(rows.prefill_len[i]), dtype=np.int64))


def _by_kind(ratios: np.ndarray, kinds: np.ndarray) -> dict:
    ok = np.isfinite(ratios) & (ratios > 0)
    out = {k: ratios[ok & (kinds == k)] for k in KINDS}
    pooled = ratios[ok]
    return {k: (v if len(v) else pooled) for k, v in out.items()}


def residuals_for(sim) -> tuple[dict | None, str]:
    """The held-out errors that apply to a built simulation's cost model."""
    from simkv.cost.calibrated import CalibratedCost
    from simkv.cost.step_table import StepTableCost
    cost = sim.cost
    if isinstance(cost, StepTableCost):
        return table_residuals(cost)
    if isinstance(cost, CalibratedCost) and not cost.cal.notes:
        found = calibration_residuals(cost.cal.gpu)
        if found is not None:
            return found
    return None, f"none: {sim.cost_name} has no held-out measurements, the interval holds seed variation only"


# ------------------------------------------------------------------ replicates

def _metric(summary: dict, path: tuple) -> float:
    node = summary
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return float("nan")
        node = node[key]
    return float(node) if isinstance(node, (int, float)) and node is not None else float("nan")


def prediction_intervals(scenario, name: str, base_summary: dict, n: int, *, stream_for, build, run_simulation) -> dict:
    """[p5, p95] of the headline metrics over the base run and `n` replicates (module docstring).
    The run driver lends its `stream_for(scenario)`, `build(scenario, stream)` and
    `run_simulation(sim, name)`, so every replicate is simulated exactly as a run is."""
    runs = []
    residuals, what = None, ""
    rng = np.random.default_rng(np.random.SeedSequence([scenario.run.seed, 16, n]))
    for i in range(1, n + 1):
        run = scenario.run.model_copy(update={"seed": scenario.run.seed + i})
        point = scenario.model_copy(update={"run": run})
        stream = stream_for(point)
        built = build(point, stream)
        if i == 1:
            residuals, what = residuals_for(built)
        factors = {k: (float(rng.choice(residuals[k])) if residuals is not None and len(residuals[k]) else 1.0)
                   for k in KINDS}
        built.cost = ScaledCost(built.cost, factors)
        runs.append((run_simulation(built, name).summary, factors))
    metrics = {}
    for path in HEADLINE:
        values = np.array([_metric(base_summary, path)] + [_metric(s, path) for s, _ in runs])
        values = values[np.isfinite(values)]
        if len(values):
            metrics[".".join(path)] = [float(np.percentile(values, 5)), float(np.percentile(values, 95))]
    return {"replicates": n, "percentiles": [5, 95],
            "method": "the base run and N replicates, each with another seed (run.seed + i) and step costs "
                      "multiplied by one resampled held-out error factor per step kind",
            "residuals": what,
            "factors": [f for _, f in runs],
            "metrics": metrics}


LABELS = {"throughput.requests_per_s": ("requests/s", 1.0, ".2f"),
          "throughput.output_tokens_per_s": ("output tokens/s", 1.0, ".0f")}


def markdown_intervals(name: str, summary: dict) -> list[str]:
    """The report's prediction-interval table of one variant."""
    iv = summary["intervals"]
    lines = ["", f"Prediction intervals ({name}; [p5, p95] over the run and {iv['replicates']} replicates: other "
                 f"seeds, step costs x resampled held-out errors; residuals: {iv['residuals']}):", "",
             "| metric | this run | p5 | p95 |", "|---|---:|---:|---:|"]
    for key, (lo, hi) in iv["metrics"].items():
        label, scale, fmt = LABELS.get(key, (key.replace("latency_s.", "") + " (ms)", 1e3, ".1f"))
        here = _metric(summary, tuple(key.split(".")))
        lines.append(f"| {label} | {here * scale:{fmt}} | {lo * scale:{fmt}} | {hi * scale:{fmt}} |")
    return lines
