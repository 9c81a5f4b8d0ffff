"""Step-time models: how long one engine step takes on a GPU, from the step's per-sequence work.

`CalibratedCost` (default) is fitted on real H100/H200 measurements; `RooflineCost` uses only the
GPU's ceilings. `step_time(...)` answers one query by shape.
"""

from simkv.cost.api import cost_model, plan_from_shape, step_time
from simkv.cost.base import StepCost
from simkv.cost.calibrated import CalibratedCost
from simkv.cost.roofline import RooflineCost

__all__ = ["StepCost", "RooflineCost", "CalibratedCost", "step_time", "cost_model", "plan_from_shape"]
