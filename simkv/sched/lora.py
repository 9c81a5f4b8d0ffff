"""Multi-LoRA serving around any batching policy (vLLM semantics).

Models: the engine admits a request into its scheduler only while the requests it holds use at
most `max_loras` distinct adapters (the request's adapter already among them, or a free place);
any other request waits in arrival order in an adapter queue, and every later request that fits
goes ahead of it (vLLM skips such requests and schedules later ones). The GPU holds `max_loras`
adapter slots: an adapter that becomes active and is not in a slot is copied from host memory
over PCIe (its bytes / the measured host-to-device rate), evicting the least recently used
inactive slot, and the copy lengthens the step it happens in. Base-model requests (-1) need no slot.
Simplifications: the limit applies to the requests in the scheduler (running or queued in it),
not only to the running batch; disk-to-host loading is not modelled (all adapters host-resident).
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from simkv.sched.base import StepOutcome, StepPlan


class LoraScheduler:
    """Wraps a scheduler (same protocol); `lora_stats()` is the summary's `lora` section."""

    def __init__(self, inner, adapter_of: np.ndarray, *, max_loras: int, slots: int, load_s: float,
                 arrival_s: np.ndarray) -> None:
        self.inner, self.adapter_of = inner, adapter_of
        self.batch = inner.batch
        self.max_loras, self.slots, self.load_s = max_loras, slots, load_s
        self.arrival_s = arrival_s
        self.active: dict[int, int] = {}          # adapter -> requests in the scheduler
        self.resident: OrderedDict[int, None] = OrderedDict()   # GPU slots, least recently used first
        self.held: deque[int] = deque()
        self.pending_load_s = 0.0
        self.now = 0.0
        self.loads = self.hits = self.waited = 0
        self.wait_s = 0.0
        self.load_seconds = 0.0
        self.distinct_sum = self.steps = 0   # distinct adapters summed over the steps run, and the steps
        self._plan_distinct = 0

    def __getattr__(self, name):
        if name.startswith("__") or name == "inner":  # copies and pickles: not the wrapped object's
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ------------------------------------------------------------ admission
    def _fits(self, a: int) -> bool:
        return a < 0 or a in self.active or len(self.active) < self.max_loras

    def _activate(self, a: int) -> None:
        if a < 0:
            return
        if a in self.active:
            self.active[a] += 1
            return
        self.active[a] = 1
        if a in self.resident:
            self.hits += 1
            self.resident.move_to_end(a)
            return
        self.loads += 1
        self.pending_load_s += self.load_s
        self.load_seconds += self.load_s
        if len(self.resident) >= self.slots:
            victim = next(x for x in self.resident if x not in self.active)
            del self.resident[victim]
        self.resident[a] = None

    def _forward(self, rid: int) -> bool:
        a = int(self.adapter_of[rid])
        self._activate(a)
        if not self.inner.add_request(rid):
            self._release(a)
            return False
        return True

    def _release(self, a: int) -> None:
        if a >= 0:
            self.active[a] -= 1
            if not self.active[a]:
                del self.active[a]

    def add_request(self, req_id: int) -> bool:
        if not self.held and self._fits(int(self.adapter_of[req_id])):
            return self._forward(req_id)
        if self._fits(int(self.adapter_of[req_id])):   # fits now: goes ahead of the held ones (vLLM skips them)
            return self._forward(req_id)
        self.held.append(req_id)
        return True

    def _drain(self) -> None:
        if not self.held:
            return
        keep: deque[int] = deque()
        for rid in self.held:
            if self._fits(int(self.adapter_of[rid])):
                self.waited += 1
                self.wait_s += max(0.0, self.now - float(self.arrival_s[rid]))
                self._forward(rid)   # a refusal marks it like any refused arrival: not tracked further
            else:
                keep.append(rid)
        self.held = keep

    # ------------------------------------------------------------ protocol
    def has_work(self) -> bool:
        return self.inner.has_work() or bool(self.held)

    def schedule(self) -> StepPlan | None:
        self._drain()
        plan = self.inner.schedule()
        if plan is not None:   # counted per step when committed (a plan may run as many steps)
            ids = np.concatenate([plan.decode_ids, plan.prefill_ids]).astype(np.int64)
            ad = self.adapter_of[ids] if len(ids) else ids
            self._plan_distinct = len(np.unique(ad[ad >= 0]))
        return plan

    def take_pending_load_s(self) -> float:
        t, self.pending_load_s = self.pending_load_s, 0.0
        return t

    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray) -> StepOutcome:
        out = self.inner.commit(plan, start_s, durations_s)
        self.steps += len(durations_s)
        self.distinct_sum += self._plan_distinct * len(durations_s)
        self.now = float(out.step_end_s[-1])
        for rid in out.finished_ids:
            self._release(int(self.adapter_of[rid]))
        self._drain()
        return out

    def lora_stats(self) -> dict:
        activations = self.hits + self.loads
        return {"max_loras": self.max_loras, "gpu_slots": self.slots,
                "adapter_loads": self.loads, "adapter_hits": self.hits,
                "hit_rate": self.hits / activations if activations else None,
                "load_seconds": self.load_seconds, "seconds_per_load": self.load_s,
                "requests_waited_for_adapter": self.waited, "adapter_wait_s_total": self.wait_s,
                "adapter_wait_s_mean": self.wait_s / self.waited if self.waited else 0.0,
                "mean_distinct_adapters_per_step": self.distinct_sum / self.steps if self.steps else 0.0}
