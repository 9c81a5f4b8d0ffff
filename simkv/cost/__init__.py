"""Step-time models: how long one engine step takes on a GPU, from the step's per-sequence work."""

from simkv.cost.base import StepCost
from simkv.cost.roofline import RooflineCost

__all__ = ["StepCost", "RooflineCost"]
