"""Speculative decoding around any batching policy: the policy plans the step, this wrapper turns
its decodes into verification of k + 1 tokens per sequence and commits each sequence's accepted
tokens (see simkv.features.speculative for the acceptance model).

Models: proposals for every decoding sequence of the step (vLLM; in mixed chunked-prefill steps
too); none in a step with more decoders than `disable_above_batch`. Paged on demand, the blocks
for all k + 1 slots are taken before verification and the rejected ones freed after it: k is
lowered for the step until the free pool holds them (no speculation if not even one fits).
Reserved caches (contiguous regions, TGI's up-front blocks) hold the speculative slots in the
reservation (max_new_tokens + k, set by the builder); a sequence keeps at most the tokens its
output still needs. Only k + 1 positions are verified; a step is never fast-forwarded.
Simplifications: the k + 1 tokens count against no token budget; peak blocks during verification
are not in the KV timeline (only the kept tokens' blocks are).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from simkv.sched.base import StepOutcome, StepPlan
from simkv.sched.queue import use_reference_batch
from simkv.features.speculative import Speculative


class SpeculativeScheduler:
    """Wraps a scheduler (same protocol); `stats()` is the summary's `speculative` section."""

    def __init__(self, inner, spec: Speculative, rng: np.random.Generator) -> None:
        self.inner, self.spec, self.rng = inner, spec, rng
        use_reference_batch(inner)   # decoders advance by different numbers of tokens
        self.batch = inner.batch
        self.steps = self.speculative_steps = self.disabled_steps = self.shortened_steps = 0
        self.proposed = self.accepted = self.emitted = self.verified_seqs = 0

    def __getattr__(self, name):  # everything else is the policy's (waiting queue, stats, ...)
        if name.startswith("__") or name == "inner":  # copies and pickles: not the wrapped object's
            raise AttributeError(name)
        return getattr(self.inner, name)

    def add_request(self, req_id: int) -> bool:
        return self.inner.add_request(req_id)

    def has_work(self) -> bool:
        return self.inner.has_work()

    def _room(self, k: int) -> int:
        """The largest proposal count <= k whose verification slots fit (paged on demand)."""
        b = self.batch
        if not b.on_demand:
            return k
        free = b.kv_alloc.num_free_blocks
        while k > 0 and b.decode_blocks_needed(k + 1) > free:
            k -= 1
        return k

    def schedule(self) -> StepPlan | None:
        plan = self.inner.schedule()
        if plan is None or not len(plan.decode_ids):
            return plan
        self.steps += 1
        n, limit = len(plan.decode_ids), self.spec.disable_above_batch
        if limit is not None and n > limit:
            self.disabled_steps += 1
            return plan
        k = self._room(self.spec.num_tokens)
        if k == 0:
            self.disabled_steps += 1
            return plan
        if k < self.spec.num_tokens:
            self.shortened_steps += 1
        return replace(plan, decode_tokens=k + 1, decode_ctx=plan.decode_ctx + k, max_steps=1, arrival_sensitive=True)

    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray) -> StepOutcome:
        if plan.decode_tokens > 1:
            b, k = self.batch, plan.decode_tokens - 1
            accepted = np.minimum(self.spec.sample_accepted(self.rng, len(b.ids)), k)
            keep = np.minimum(accepted + 1, b.out - b.gen)
            if not b.on_demand:  # never beyond the reserved region
                keep = np.minimum(keep, np.maximum(b.held - b.kv, 1))
            b.spec_tokens = keep.astype(np.int64)
            self.speculative_steps += 1
            self.verified_seqs += len(b.ids)
            self.proposed += k * len(b.ids)
            self.accepted += int(accepted.sum())
            self.emitted += int(keep.sum())
        return self.inner.commit(plan, start_s, durations_s)

    def speculative_stats(self) -> dict:
        s = self.spec
        return {
            "method": s.method, "num_tokens": s.num_tokens,
            "draft_model": s.draft_model if isinstance(s.draft_model, str) or s.draft_model is None else "custom",
            "acceptance_rate_set": s.acceptance_rate, "expected_tokens_per_step": s.expected_tokens(),
            "decode_steps": self.steps, "speculative_steps": self.speculative_steps,
            "steps_without_speculation": self.disabled_steps, "steps_with_fewer_proposals": self.shortened_steps,
            "proposed_tokens": self.proposed, "accepted_tokens": self.accepted,
            "accepted_fraction_observed": self.accepted / self.proposed if self.proposed else None,
            "tokens_per_sequence_step": self.emitted / self.verified_seqs if self.verified_seqs else None,
        }
