"""The exact sequence of engine steps a simulation ran, one entry per step (fast-forwarded
decode runs expanded), so a real engine can execute the same schedule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simkv.result import Result
from simkv.scenario import Scenario


@dataclass(frozen=True)
class Step:
    """One engine step: which sequences decode (context after the step), which prefill which
    positions, who was preempted just before it, and when it ran in the simulation."""

    decode_ids: np.ndarray
    decode_ctx: np.ndarray          # KV positions attended, including the new token
    prefill_ids: np.ndarray
    prefill_start: np.ndarray       # first position computed this step
    prefill_end: np.ndarray         # context after the step
    prefill_done: np.ndarray        # the prefill completes and samples a token
    preempted_ids: tuple[int, ...]
    start_s: float
    duration_s: float               # the cost model's prediction (simulated)

    @property
    def num_tokens(self) -> int:
        return len(self.decode_ids) + int((self.prefill_end - self.prefill_start).sum())


@dataclass(frozen=True)
class ScheduleTrace:
    steps: list[Step]
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    preemption: str                 # recompute | swap
    result: Result                  # the simulation's own result


class _Recording:
    """Wraps a scheduler and keeps every committed plan with its start and step durations."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.commits: list[tuple[object, float, np.ndarray]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def commit(self, plan, start_s, durations_s):
        self.commits.append((plan, float(start_s), np.array(durations_s, dtype=float)))
        return self.inner.commit(plan, start_s, durations_s)


def record_schedule(scenario: Scenario, variant: str | None = None) -> ScheduleTrace:
    """Simulate `scenario` and return its steps, one per engine iteration."""
    from simkv.simulate import prepared, run_simulation
    name, _, sim = next(prepared(scenario, variant, variant_field="--variant"))
    recording = _Recording(sim.scheduler)
    sim.scheduler = recording
    result = run_simulation(sim, name)
    steps = []
    for plan, start, durations in recording.commits:
        ends = start + np.cumsum(durations)
        done = plan.prefill_done if len(plan.prefill_done) else np.ones(len(plan.prefill_ids), bool)
        for j, d in enumerate(durations):
            steps.append(Step(np.asarray(plan.decode_ids, dtype=np.int64).copy(),
                              np.asarray(plan.decode_ctx, dtype=np.int64) + j,
                              np.asarray(plan.prefill_ids, dtype=np.int64).copy() if j == 0 else np.zeros(0, np.int64),
                              np.asarray(plan.prefill_ctx - plan.prefill_new, dtype=np.int64) if j == 0 else np.zeros(0, np.int64),
                              np.asarray(plan.prefill_ctx, dtype=np.int64) if j == 0 else np.zeros(0, np.int64),
                              np.asarray(done, bool) if j == 0 else np.zeros(0, bool),
                              tuple(int(r) for r in plan.preempted_ids) if j == 0 else (),
                              float(ends[j] - d), float(d)))
    t = sim.table
    return ScheduleTrace(steps, t.arrival_s.copy(), t.prompt_tokens.copy(), t.output_tokens.copy(),
                         sim.engine.preemption, result)
