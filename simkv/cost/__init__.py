"""Step-time models: how long one engine step takes on a GPU, from the step's per-sequence work.

`CalibratedCost` (default) is fitted on real H100/H200 measurements; `RooflineCost` uses only the
GPU's ceilings. `step_time(...)` answers one query by shape.
"""

from simkv.cost.base import StepCost
from simkv.cost.calibrated import CalibratedCost
from simkv.cost.roofline import RooflineCost

__all__ = ["StepCost", "RooflineCost", "CalibratedCost", "step_time", "cost_model", "plan_from_shape"]


def __getattr__(name: str):
    # step_time and cost_model resolve a scenario's calibration from files (an edge), so they are
    # imported on first use and the cost package itself reads nothing
    if name in ("step_time", "cost_model", "plan_from_shape"):
        from simkv.studies import step_time as api
        return getattr(api, name)
    raise AttributeError(f"module 'simkv.cost' has no attribute {name!r}")
