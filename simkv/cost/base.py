"""The step-time contract the engine calls every simulated step."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from simkv.sched.base import StepPlan


class StepCost(Protocol):
    """Seconds a step takes. Implementations hold their coefficients; they never read files."""

    def seconds(self, plan: StepPlan) -> float:
        """Time of one step of `plan` (prefills, decodes, or a mix)."""

    def decode_run_seconds(self, decode_ctx: np.ndarray, num_steps: int) -> np.ndarray:
        """Times of `num_steps` consecutive decode-only steps of the same sequences, the first at
        contexts `decode_ctx`, each later step one token longer per sequence.

        Step k's time depends only on `decode_ctx + k`, bit for bit: the first a + b steps are
        the first a steps followed by the first b from `decode_ctx + a`. The engine then times a
        run that an arrival may cut in two such pieces (tests/test_cost_runs.py checks the
        calibrated and roofline models and the interval study's scaling). A model that cannot
        promise it sets `decode_runs_split_exactly = False`, and the engine times its runs whole
        (StepTableCost). A model that counts the steps it prices does so in an optional
        `decode_run_ran(decode_ctx, num_steps)`, which the engine calls with the steps it
        simulated."""
