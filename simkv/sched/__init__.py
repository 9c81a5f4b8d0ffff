"""Scheduler policies: turn engine state into a StepPlan each iteration."""

from simkv.sched.base import Scheduler, StepPlan, StepOutcome
from simkv.sched.continuous import ContinuousBatchingScheduler

__all__ = ["Scheduler", "StepPlan", "StepOutcome", "ContinuousBatchingScheduler"]
