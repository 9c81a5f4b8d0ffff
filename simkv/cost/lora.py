"""Step time with LoRA adapters: the base step plus, per decoder layer, the low-rank GEMMs of every
adapter group in the batch (shrink x[t, k] @ A[k, r], expand [t, r] @ B[r, n] for each target
layer, from the GEMM tables: unmeasured small-n shapes scaled by roofline efficiency) and a stated
fixed cost per distinct adapter (the grouped kernels' launch share; not measured), plus any adapter
copied to the GPU for the step (simkv.sched.lora)."""

from __future__ import annotations

import numpy as np

from simkv.sched.base import StepPlan


class LoraCost:
    def __init__(self, base, scheduler, adapter_of: np.ndarray, rank_of: dict[int, int], shapes: list[tuple[int, int]],
                 gemm_time, layers: int, overhead_per_adapter_s: float, source: str) -> None:
        self.base, self.sched, self.adapter_of = base, scheduler, adapter_of
        self.rank_of, self.shapes, self.gemm_time = rank_of, shapes, gemm_time
        self.layers, self.overhead = layers, overhead_per_adapter_s
        self.source = source
        self._cache: dict[tuple[int, int], float] = {}

    def __getattr__(self, name):
        if name.startswith("__") or name == "base":  # copies and pickles: not the wrapped object's
            raise AttributeError(name)
        return getattr(self.base, name)

    def _group_s(self, tokens: int, rank: int) -> float:
        key = (tokens, rank)
        if key not in self._cache:
            t = sum(float(self.gemm_time(tokens, k, rank)) + float(self.gemm_time(tokens, rank, n)) for k, n in self.shapes)
            self._cache[key] = self.layers * (t + self.overhead)
        return self._cache[key]

    def lora_seconds(self, plan: StepPlan) -> float:
        ids = np.concatenate([plan.decode_ids, plan.prefill_ids]).astype(np.int64)
        if not len(ids):
            return 0.0
        tokens = np.concatenate([np.full(len(plan.decode_ids), plan.decode_tokens), plan.prefill_new]).astype(np.int64)
        ad = self.adapter_of[ids]
        total = 0.0
        for a in np.unique(ad[ad >= 0]).tolist():
            total += self._group_s(int(tokens[ad == a].sum()), self.rank_of[a])
        return total

    def seconds(self, plan: StepPlan) -> float:
        return self.base.seconds(plan) + self.lora_seconds(plan) + self.sched.take_pending_load_s()

    def decode_run_seconds(self, decode_ctx: np.ndarray, num_steps: int) -> np.ndarray:
        """Repeated decode-only steps: the whole running batch decodes (the fast-forward contract)."""
        plan = StepPlan(decode_ids=self.sched.batch.ids, decode_ctx=decode_ctx)
        d = self.base.decode_run_seconds(decode_ctx, num_steps) + self.lora_seconds(plan)
        d[0] += self.sched.take_pending_load_s()
        return d

    def layer_seconds(self, plan: StepPlan) -> float:
        return self.base.layer_seconds(plan)

    def sources(self) -> dict[str, str]:
        return {**self.base.sources(), "lora": self.source}
