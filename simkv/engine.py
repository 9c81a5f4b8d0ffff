"""One replica on simpy: an arrival process feeds the scheduler; the step loop runs
plan → step time → timeout → commit → record, and sleeps on a wake-up event when idle.

Fast-forward: a decode-only plan that nothing can change (no completion, no block shortage,
no admissible arrival) is committed as k identical steps with one timeout; the step times
still come one per step from the cost model, so results equal the step-by-step loop.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import simpy

from simkv.metrics import Recorder
from simkv.request import REFUSED_BY_ENGINE, REJECTED, RequestTable

ProgressFn = Callable[[int, int, float], None]


class Replica:
    """The serving engine of one replica (the only simpy user)."""

    def __init__(self, env: simpy.Environment, table: RequestTable, scheduler, cost, recorder: Recorder,
                 progress: ProgressFn | None = None) -> None:
        self.env = env
        self.t = table
        self.scheduler = scheduler
        self.cost = cost
        self.recorder = recorder
        self.progress = progress
        self._next_arrival = 0
        self._arrivals_done = False
        self._wake = env.event()
        self.done = env.process(self._step_loop())
        env.process(self._arrivals())

    def _arrivals(self):
        env, arrival, status = self.env, self.t.arrival_s, self.t.status
        for rid in range(self.t.num_requests):
            delay = arrival[rid] - env.now
            if delay > 0:
                yield env.timeout(delay)
            self._next_arrival = rid + 1
            if status[rid] == REJECTED:
                continue
            if not self.scheduler.add_request(rid):
                status[rid] = REJECTED
                self.t.reject_reason[rid] = REFUSED_BY_ENGINE
                continue
            if not self._wake.triggered:
                self._wake.succeed()
        self._arrivals_done = True
        if not self._wake.triggered:
            self._wake.succeed()

    def _next_arrival_s(self) -> float:
        i = self._next_arrival
        return float(self.t.arrival_s[i]) if i < self.t.num_requests else np.inf

    def _durations(self, plan) -> np.ndarray:
        if plan.max_steps == 1:
            return np.array([self.cost.seconds(plan)])
        d = self.cost.decode_run_seconds(plan.decode_ctx, plan.max_steps)
        if plan.arrival_sensitive:
            # steps that start before the next arrival are unaffected by it
            offsets = np.cumsum(d[:-1])
            keep = 1 + int(np.searchsorted(offsets, self._next_arrival_s() - self.env.now, side="left"))
            d = d[:keep]
        return d

    def _step_loop(self):
        env, sched, rec = self.env, self.scheduler, self.recorder
        iterations = 0
        while True:
            plan = sched.schedule()
            if plan is None:
                if self._arrivals_done:
                    return
                if self._wake.triggered:
                    self._wake = env.event()
                idle_from = env.now
                yield self._wake
                rec.on_idle(idle_from, env.now)
                continue
            durations = self._durations(plan)
            start = env.now
            # the same cumulative sum as commit's step ends, so token times match env.now exactly
            yield env.timeout(float(durations[0] if len(durations) == 1 else np.cumsum(durations)[-1]))
            outcome = sched.commit(plan, start, durations)
            rec.on_steps(start, outcome, durations)
            rec.on_extra_gaps(outcome.extra_gaps_s)
            iterations += 1
            if self.progress is not None and iterations % 512 == 0:
                self.progress(self._next_arrival, self.t.num_requests, env.now)
