"""Which step-time model a scenario runs with: the user's measured step table (`cost: {table:
...}`), calibrated where measurements were given, the roofline otherwise; plus the engine's host
overhead per step. Pure: the run driver (`simkv.simulate.cost_inputs`) reads the measurements
from files and hands them over as `CostInputs`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from simkv.features import host_overhead
from simkv.cost.calibrated import Calibration, CalibratedCost
from simkv.cost.roofline import RooflineCost
from simkv.presets import resolve_engine

if TYPE_CHECKING:
    from simkv.cost.moe import MoeGemmTable
    from simkv.cost.step_table import StepRows
    from simkv.scenario import Scenario


@dataclass(frozen=True)
class CostInputs:
    """The measurements one scenario's step-time model is built from (None: not available)."""

    calibration: Calibration | None = None   # the GPU's fitted operator and layer tables
    moe_table: MoeGemmTable | None = None     # grouped expert GEMMs (mixture-of-experts models)
    step_table: StepRows | None = None        # a user step table's rows (cost: {table: ...})


def make_cost(scenario: Scenario, inputs: CostInputs, max_tokens: int = 16384):
    """(step-time model, its description) for `scenario` from `inputs`, with the engine's host
    overhead per step (simkv.features.host_overhead: fixed + per sequence, the preset's where unset)."""
    if not isinstance(scenario.cost, str):   # a user step table (scenario.StepTableSpec)
        return _table_cost(scenario, inputs, max_tokens)
    cost, name = _gpu_cost(scenario, inputs, max_tokens)
    host = host_overhead.resolve(scenario.engine)
    cost.host_overhead_s, cost.host_per_seq_s, cost.host_source = host.fixed_s, host.per_seq_s, host.source
    if hasattr(cost, "_fixed_cache"):
        cost._fixed_cache.clear()   # the roofline memoises steps with the fixed host term in them
    return cost, name


def _gpu_cost(scenario: Scenario, inputs: CostInputs, max_tokens: int):
    model, gpu = scenario.model_spec(), scenario.gpu_spec()
    tp = scenario.hardware.tensor_parallel
    gpu_name = scenario.hardware.gpu if isinstance(scenario.hardware.gpu, str) else None
    e = resolve_engine(scenario)
    if scenario.cost == "calibrated":
        calibration, source = inputs.calibration, gpu_name
        if gpu.calibration:
            source = f"{gpu_name or 'custom GPU'}, {gpu.calibration.rstrip('/').rsplit('/', 1)[-1]}/"
        if calibration is not None and calibration.notes:  # A100: Vidur profiles (issue 16)
            source = f"{gpu_name}: Vidur A100 operator profiles, stated attention model; no simkv"
        if calibration is not None and model.moe is not None and inputs.moe_table is None:
            calibration, source = None, f"{source}: no moe_gemm.csv"
        if calibration is not None:
            cost = CalibratedCost(calibration, model, gpu, tensor_parallel=tp, weight_dtype=e.weight_dtype,
                                  kv_dtype=e.kv_cache_dtype, host_overhead_s=e.host_overhead_s, max_tokens=max_tokens,
                                  moe_table=inputs.moe_table if model.moe is not None else None,
                                  expert_parallel=e.expert_parallel, expert_imbalance=e.expert_load_imbalance)
            return cost, f"calibrated ({source} measurements)"
    cost = RooflineCost(model, gpu, tensor_parallel=tp, weight_dtype=e.weight_dtype, kv_dtype=e.kv_cache_dtype,
                        host_overhead_s=e.host_overhead_s, expert_parallel=e.expert_parallel,
                        expert_imbalance=e.expert_load_imbalance)
    if scenario.cost == "calibrated":
        return cost, f"roofline (no calibration measurements for '{gpu_name or 'custom GPU'}')"
    return cost, "roofline"


def _table_cost(scenario: Scenario, inputs: CostInputs, max_tokens: int):
    from simkv.cost.step_table import StepTableCost
    spec = scenario.cost
    base, base_name = make_cost(scenario.model_copy(update={"cost": "calibrated"}), inputs, max_tokens)
    cost = StepTableCost(inputs.step_table, base, host_overhead_s=base.host_overhead_s,
                         host_per_seq_s=base.host_per_seq_s, extrapolate=spec.extrapolate,
                         host_in_table=spec.host_in_table)
    return cost, f"user step table ({spec.table}; swap from {base_name})"
