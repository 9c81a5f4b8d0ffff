"""Speculative decoding settings (`engine.speculative`) and the acceptance model.

Models: every running sequence proposes k tokens per step (a draft model's k decode steps, n-gram
prompt lookup at no cost, or EAGLE/MTP- or Medusa-style draft heads at a stated cost per proposed
token); the target model verifies all k + 1 positions in one step. The number accepted is sampled
per sequence per step from the seed: with a per-position acceptance rate a, the count of leading
accepted proposals (P(j) = a^j (1 - a) for j < k, a^k for k); or from a given per-step
distribution over 0..k. Every sequence then keeps accepted + 1 tokens (the verifier's own token).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from simkv.cost import exact_fit
from simkv.specs import ModelSpec, Strict


class Speculative(Strict):
    """Speculative decoding: k proposals per sequence per step, verified by the target in one step."""

    method: Literal["ngram", "draft", "eagle", "medusa"] = Field(
        description="ngram: prompt lookup, no proposal cost; draft: a small model's own decode steps (draft_model); "
        "eagle: EAGLE/MTP draft head, one target layer + lm_head per proposed token (stated); medusa: k heads, "
        "one lm_head each (stated)")
    num_tokens: PositiveInt = Field(le=16, description="proposed tokens per sequence per step, k (tokens)")
    acceptance_rate: float | None = Field(None, ge=0, le=1, description="chance each proposal is accepted given the "
                                          "previous one was (per position, dimensionless); or acceptance")
    acceptance: list[float] | None = Field(None, description="per-step distribution of accepted proposals: k + 1 "
                                           "probabilities for 0..k accepted, summing to 1; or acceptance_rate")
    draft_model: str | ModelSpec | None = Field(None, description="method draft: catalog name or spec of the draft model")
    disable_above_batch: PositiveInt | None = Field(
        None, description="no speculation in steps with more decoding sequences than this (vLLM "
        "speculative_disable_by_batch_size); none: always")

    @model_validator(mode="after")
    def _one_acceptance(self) -> "Speculative":
        if (self.acceptance_rate is None) == (self.acceptance is None):
            raise ValueError("give acceptance_rate (per position) or acceptance (per-step distribution), exactly one")
        if self.acceptance is not None:
            if len(self.acceptance) != self.num_tokens + 1 or min(self.acceptance) < 0:
                raise ValueError(f"acceptance needs num_tokens + 1 = {self.num_tokens + 1} non-negative probabilities")
            if abs(sum(self.acceptance) - 1) > 1e-6:
                raise ValueError(f"acceptance probabilities sum to {sum(self.acceptance):g}, not 1")
        if (self.method == "draft") != (self.draft_model is not None):
            raise ValueError("draft_model is required with method draft, and only then")
        return self

    def distribution(self) -> np.ndarray:
        """P(accepted = j), j = 0..k."""
        k = self.num_tokens
        if self.acceptance is not None:
            return np.asarray(self.acceptance, float)
        a = self.acceptance_rate
        p = np.array([a ** j * (1 - a) for j in range(k)] + [a ** k])
        return p / p.sum()

    def expected_tokens(self) -> float:
        """Tokens a sequence keeps per speculative step, accepted + 1 (the analytic mean)."""
        return exact_fit.dot(np.arange(self.num_tokens + 1), self.distribution()) + 1.0

    def sample_accepted(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(self.num_tokens + 1, size=n, p=self.distribution()).astype(np.int64)
