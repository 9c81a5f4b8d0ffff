"""Step time of speculative decoding: the target's verification step plus the proposals' cost.

Models: verification is the target's own step with k + 1 tokens per decoding sequence (GEMMs and
lm_head over every position, decode attention at the sequences' contexts: the measured one-query
decode kernel, assumed to read each sequence's KV once for all k + 1 queries - not measured).
Proposals, per step with speculation:
- ngram: none (prompt lookup on the host, assumed free);
- draft: k decode steps of the draft model over the same sequences (its own calibrated or roofline
  cost model), plus the draft's prefill of every prompt chunk the target prefills;
- eagle: k x (one target decoder layer + lm_head) at the batch (an EAGLE / MTP head is one layer
  feeding the target's lm_head): a stated cost, not measured;
- medusa: k lm_head-sized heads in one pass: a stated cost, not measured.
"""

from __future__ import annotations

import numpy as np

from simkv.sched.base import StepPlan
from simkv.features.speculative import Speculative


def _decode_plan(ids: np.ndarray, ctx: np.ndarray) -> StepPlan:
    return StepPlan(decode_ids=ids, decode_ctx=ctx)


class SpeculativeCost:
    """Wraps a step-time model; `draft` is the draft model's step-time model (method draft)."""

    def __init__(self, base, spec: Speculative, draft=None) -> None:
        self.base, self.spec, self.draft = base, spec, draft

    def __getattr__(self, name):
        if name.startswith("__") or name == "base":  # copies and pickles: not the wrapped object's
            raise AttributeError(name)
        return getattr(self.base, name)

    def _head_parts(self, plan: StepPlan) -> tuple[float, float]:
        """(one target layer, lm_head) of a plain decode step over the plan's sequences."""
        p = _decode_plan(plan.decode_ids, plan.decode_ctx - (plan.decode_tokens - 1))
        layer = self.base.layer_seconds(p)
        lm_head = self.base.seconds(p) - self.base.layers * layer - self.base.host_overhead_s
        return layer, max(lm_head, 0.0)

    def proposal_seconds(self, plan: StepPlan) -> float:
        k = plan.decode_tokens - 1
        if k == 0 or not len(plan.decode_ids):
            return 0.0
        m = self.spec.method
        if m == "ngram":
            return 0.0
        if m == "draft":
            ctx = plan.decode_ctx - k
            return sum(self.draft.seconds(_decode_plan(plan.decode_ids, ctx + j)) for j in range(k))
        layer, lm_head = self._head_parts(plan)
        return k * (layer + lm_head) if m == "eagle" else k * lm_head

    def seconds(self, plan: StepPlan) -> float:
        t = self.base.seconds(plan) + self.proposal_seconds(plan)
        if self.draft is not None and len(plan.prefill_ids):  # the draft keeps its KV of every prompt
            t += self.draft.seconds(StepPlan(prefill_ids=plan.prefill_ids, prefill_new=plan.prefill_new,
                                             prefill_ctx=plan.prefill_ctx, prefill_done=plan.prefill_done))
        return t

    def decode_run_seconds(self, decode_ctx: np.ndarray, num_steps: int) -> np.ndarray:
        return self.base.decode_run_seconds(decode_ctx, num_steps)   # steps without speculation

    def layer_seconds(self, plan: StepPlan) -> float:
        return self.base.layer_seconds(plan)

    def sources(self) -> dict[str, str]:
        out = dict(self.base.sources())
        m = self.spec.method
        out["speculative_verify"] = ("target step over k + 1 tokens per sequence (GEMMs, lm_head from the tables above); "
                                     "decode attention assumed to read each KV once for the k + 1 queries (not measured)")
        out["speculative_proposals"] = {
            "ngram": "assumed 0 (prompt lookup on the host)",
            "draft": "the draft model's own step times (its cost model, as for the target) x k per step, plus its prefills",
            "eagle": "stated (not measured): k x (one target layer + lm_head) per step",
            "medusa": "stated (not measured): k x lm_head per step",
        }[m]
        return out
