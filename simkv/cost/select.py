"""Which step-time model a scenario runs with: calibrated where measurements were given, the
roofline otherwise (pure: the run driver, `simkv.simulate`, resolves the measurements)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from simkv.cost.calibrated import Calibration, CalibratedCost
from simkv.cost.roofline import RooflineCost
from simkv.presets import resolve_engine

if TYPE_CHECKING:
    from simkv.scenario import Scenario


def make_cost(scenario: Scenario, calibration: Calibration | None, max_tokens: int = 16384):
    """(step-time model, its description) for `scenario`, given its GPU's fitted `calibration`
    (None: no measurements, so the roofline)."""
    model, gpu = scenario.model_spec(), scenario.gpu_spec()
    tp = scenario.hardware.tensor_parallel
    gpu_name = scenario.hardware.gpu if isinstance(scenario.hardware.gpu, str) else None
    e = resolve_engine(scenario)
    if scenario.cost == "calibrated":
        source = gpu_name
        if gpu.calibration:
            source = f"{gpu_name or 'custom GPU'}, {gpu.calibration.rstrip('/').rsplit('/', 1)[-1]}/"
        if calibration is not None and calibration.notes:  # A100: Vidur profiles (issue 16)
            source = f"{gpu_name}: Vidur A100 operator profiles, stated attention model; no simkv"
        if calibration is not None:
            cost = CalibratedCost(calibration, model, gpu, tensor_parallel=tp, weight_dtype=e.weight_dtype,
                                  kv_dtype=e.kv_cache_dtype, host_overhead_s=e.host_overhead_s, max_tokens=max_tokens)
            return cost, f"calibrated ({source} measurements)"
    cost = RooflineCost(model, gpu, tensor_parallel=tp, weight_dtype=e.weight_dtype, kv_dtype=e.kv_cache_dtype,
                        host_overhead_s=e.host_overhead_s)
    if scenario.cost == "calibrated":
        return cost, f"roofline (no calibration measurements for '{gpu_name or 'custom GPU'}')"
    return cost, "roofline"
