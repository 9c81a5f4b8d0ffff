"""One replica on simpy: an arrival process feeds the scheduler; the step loop runs
plan → step time → timeout → commit → record, and sleeps on a wake-up event when idle.

Fast-forward: a decode-only plan that nothing can change (no completion, no block shortage,
no admissible arrival) is committed as k identical steps with one timeout; the step times
still come one per step from the cost model, so results equal the step-by-step loop.
"""

from __future__ import annotations

from typing import Callable

import heapq

import numpy as np
import simpy

from simkv.errors import SimkvError
from simkv.kv.base import EXTERNAL, FREE
from simkv.metrics import Recorder
from simkv.sched.base import Scheduler, step_ends
from simkv.request import REFUSED_BY_ENGINE, REJECTED, SESSION_ENDED, RequestTable
from simkv.workload.clients import ClientPool

ProgressFn = Callable[[int, int, float], None]
_min_reduce, _max_reduce = np.minimum.reduce, np.maximum.reduce   # ndarray.min / max without their wrappers
MAX_STEP_S = 1e6   # one engine step of more than ~11 days means the cost model's inputs are wrong


class Replica:
    """The serving engine of one replica (the only simpy user).

    Interface (what a single run and a fleet, `simkv.fleet.run.Fleet`, use):

    - **clock**: the replica runs on the `simpy.Environment` it is given; a fleet hands every
      replica the same one, so all advance together (`env.run()` by the owner; `done` is the step
      loop's process, finished when the replica has nothing left to do).
    - **requests in**: alone (`routed=False`) it plays its table's arrivals itself (or its closed-loop
      clients); routed, a router calls `submit(rid)` at the arrival time (True if accepted, False if
      the engine refused it: the row is then REJECTED) and `close()` once no more will come.
    - **state out**: `scheduler.num_running`, `scheduler.num_waiting()` and `scheduler.kv.usage()`
      (the KV breakdown, simkv.kv.base.KVUsage) give the load and the cache now; the request table
      `t` holds each request's times and status, and `recorder` (simkv.metrics.Recorder) the
      time-weighted KV and queue integrals the summary is made of. A fleet may set the hooks
      `on_finished`, `next_sync_hint` and `index`.
    """

    def __init__(self, env: simpy.Environment, table: RequestTable, scheduler: Scheduler, cost, recorder: Recorder,
                 progress: ProgressFn | None = None, *, routed: bool = False) -> None:
        self.env = env
        self.t = table
        self.scheduler = scheduler
        self.cost = cost
        self._decode_run_ran = getattr(cost, "decode_run_ran", None)
        self._run_in_pieces = getattr(cost, "decode_runs_split_exactly", True)   # see StepCost.decode_run_seconds
        self._decode_step_s = 0.0   # the last decode step's length: how many steps of a run fit before an arrival
        # a multi-step run in flight: its step ends, and the queue before and after each arrival during it
        self._run_ends: np.ndarray | None = None
        self._run_sensitive = False
        self._cut_ends: np.ndarray | None = None   # the step ends _durations computed for its cut, if it did
        self._run_queue: list[tuple[float, int, int]] | None = None
        self.recorder = recorder
        self.progress = progress
        # rows that arrive on their own (a session's later turns arrive after earlier answers)
        self._initial = (np.flatnonzero(~np.isnan(table.arrival_s)) if table.next_turn is not None
                         else np.arange(table.num_requests))
        self._next_arrival = 0
        self._sent_follow_ups = 0   # later turns sent so far (progress counts them with the first turns)
        self._initial_done = False
        self._follow_ups: list[float] = []  # heap of pending follow-up arrival times
        self._wake = env.event()
        self.clients = None
        # fleet (simkv.fleet): a router submits the requests, hears of each finished one, and says when
        # the next request could reach this replica at the earliest; a failed replica stops
        self.routed, self.failed = routed, False
        self.on_finished: Callable | None = None
        # the next time the fleet reads or changes this replica's state (a fault, an autoscaler
        # tick): every run ends with the step in flight then
        self.next_sync_hint: Callable[[], float] | None = None
        if routed:
            self._initial = np.zeros(0, dtype=np.int64)
        elif getattr(table, "clients", None) is not None:  # closed-loop / offline clients send the requests
            self._start_clients()
        self.done = env.process(self._step_loop())
        if not routed:
            env.process(self._arrivals())

    def submit(self, rid: int) -> bool:
        """A router hands this replica request `rid` now (fleet); False if it is refused."""
        self._end_run_now()
        self._admit(rid)
        return self.t.status[rid] != REJECTED

    def _end_run_now(self) -> None:
        """A request reaches this replica now: an arrival-sensitive run in flight ends with its step
        in flight (the steps that start before now), as if the run had been planned up to this
        arrival. So a routed replica need not know when the fleet's next request comes (its runs are
        not cut at every fleet arrival), and one that comes from an event the replica could not
        foresee (another replica's answer starting a follow-up turn) is still seen after one step."""
        ends = self._run_ends
        if ends is None or not self._run_sensitive:
            return
        keep = _steps_starting_before(ends, self.env.now)
        if keep < len(ends):
            self._run_ends = ends[:keep]
            self.done.interrupt()

    def close(self) -> None:
        """No more requests will be submitted (fleet): the replica ends once it is idle."""
        self._initial_done = True
        if not self._wake.triggered:
            self._wake.succeed()

    @property
    def _arrivals_done(self) -> bool:
        return self._initial_done and not self._follow_ups

    def _admit(self, rid: int) -> None:
        if self.t.status[rid] == REJECTED:
            self._end_session(rid)
            return
        in_run = self._run_ends is not None
        if in_run and self._run_queue is None:   # the queue as the run's steps began
            self._run_queue = [(-np.inf, *self._queue_state())]
        if not self.scheduler.add_request(rid):
            self.t.status[rid] = REJECTED
            self.t.reject_reason[rid] = REFUSED_BY_ENGINE
            self._end_session(rid)
            return
        if in_run:
            self._run_queue.append((self.env.now, *self._queue_state()))
        if not self._wake.triggered:
            self._wake.succeed()

    def _queue_state(self) -> tuple[int, int]:
        """The queue depth and the external fragmentation it implies (a contiguous allocator's free
        space too small for the head of the queue) now."""
        s = self.scheduler
        kv = getattr(s, "kv", None)
        external = 0 if kv is None or kv.paged else kv.external_frag_tokens(s.next_reservation())
        return s.num_waiting(), external

    def _queue_by_step(self, o, ends: np.ndarray) -> None:
        """Requests arrived while a run's steps ran: each step gets the queue depth (and external
        fragmentation) at its own end, as committing the steps one by one would give, instead of
        the depth at the run's end for all of them (commit sees only the end)."""
        (_, w0, e0), *arrivals = self._run_queue
        k = len(ends)
        waiting, external = np.full(k, w0, dtype=np.int64), np.full(k, e0, dtype=np.int64)
        for at, w, e in arrivals:
            j = int(ends.searchsorted(at, side="left"))   # the first step ending at or after the arrival
            waiting[j:], external[j:] = w, e
        waiting[-1], external[-1] = o.num_waiting, o.kv[EXTERNAL, -1]   # the last step: as commit saw it
        if e0 or external[-1] or any(e for _, _, e in arrivals):   # contiguous allocators only
            kv = o.kv
            kv[FREE] += kv[EXTERNAL] - external
            kv[EXTERNAL] = external
        o.waiting_by_step = waiting

    def _arrivals(self):
        env, arrival = self.env, self.t.arrival_s
        for i, rid in enumerate(self._initial.tolist()):
            delay = arrival[rid] - env.now
            if delay > 0:
                yield env.timeout(delay)
            self._next_arrival = i + 1
            self._admit(rid)
        self._initial_done = True
        if not self._wake.triggered:
            self._wake.succeed()

    # ------------------------------------------------------------ sessions
    def _end_session(self, rid: int) -> None:
        """A turn that cannot run ends its conversation: later turns are never sent. A later turn
        that no engine could serve anyway keeps that reason (it is unservable, not refused)."""
        if self.clients is not None:  # a refused request still releases its client
            self._release(rid)
        nxt = self.t.next_turn
        while nxt is not None and nxt[rid] >= 0:
            rid = int(nxt[rid])
            self.t.status[rid] = REJECTED
            if self.t.reject_reason[rid] == 0:
                self.t.reject_reason[rid] = SESSION_ENDED

    def _answered(self, finished: tuple[int, ...]) -> None:
        """Schedule each finished turn's follow-up a think time later."""
        for rid in finished:
            nxt = int(self.t.next_turn[rid]) if self.t.next_turn is not None else -1
            if nxt < 0 and self.clients is not None:
                self._release(rid)
            if nxt >= 0:
                at = self.env.now + float(self.t.think_s[nxt])
                heapq.heappush(self._follow_ups, at)
                self.env.process(self._follow_up(nxt, at))

    def _follow_up(self, rid: int, at: float):
        yield self.env.timeout(at - self.env.now)
        heapq.heappop(self._follow_ups)
        self._sent_follow_ups += 1
        self.t.arrival_s[rid] = self.env.now
        self._admit(rid)
        if not self._wake.triggered:
            self._wake.succeed()

    # ------------------------------------------------------------ closed-loop clients
    def _start_clients(self) -> None:
        t = self.t
        self.clients = pool = ClientPool(t.clients, t.num_requests, t.session)
        self._initial = np.zeros(0, dtype=np.int64)   # every request is sent by a client
        if t.clients.warmup_requests:  # the measured window starts when the first measured request is sent
            self.recorder.w0 = np.inf
            self.scheduler.batch.warmup_s = np.inf
        for at, group in pool.start():
            heapq.heappush(self._follow_ups, at)
            self.env.process(self._send(group, at))

    def _release(self, rid: int) -> None:
        nxt = self.clients.release(rid, self.env.now)
        if nxt is not None:
            at, group = nxt
            heapq.heappush(self._follow_ups, at)
            self.env.process(self._send(group, at))

    def _send(self, group: int, at: float):
        """A client sends its group's next request at `at`; the engine sees it after the frontend's cost."""
        env, t, pool, rec = self.env, self.t, self.clients, self.recorder
        yield env.timeout(at - env.now)
        heapq.heappop(self._follow_ups)
        rid = pool.take(group)
        if rid is not None:
            t.sent_s[rid] = env.now
            if pool.sent == t.clients.warmup_requests + 1 and t.clients.warmup_requests:
                rec.w0 = self.scheduler.batch.warmup_s = env.now
            if pool.exhausted and env.now > rec.w0:  # arrivals end: the measured window closes
                rec.w1 = env.now
            delay = float(t.frontend_s[rid]) if t.frontend_s is not None else 0.0
            if delay > 0:
                heapq.heappush(self._follow_ups, env.now + delay)
                yield env.timeout(delay)
                heapq.heappop(self._follow_ups)
            t.arrival_s[rid] = env.now
            self._admit(rid)
        if not self._wake.triggered:
            self._wake.succeed()

    def _next_arrival_s(self) -> float:
        i = self._next_arrival
        nxt = float(self.t.arrival_s[self._initial[i]]) if i < len(self._initial) else np.inf
        return min(nxt, self._follow_ups[0]) if self._follow_ups else nxt

    def _durations(self, plan) -> np.ndarray:
        self._cut_ends = None
        if plan.max_steps == 1:
            return np.array([self.cost.seconds(plan)])
        # where the run must end: with the step in flight at the next arrival, if one can change the
        # plan; before the step in flight at the next sync with the fleet (whose fault would lose
        # that step, and whose autoscaler reads the steps done by then)
        arrival = self._next_arrival_s() if plan.arrival_sensitive else np.inf
        sync = self.next_sync_hint() if self.next_sync_hint is not None else np.inf
        if arrival == sync == np.inf:
            d = self.cost.decode_run_seconds(plan.decode_ctx, plan.max_steps)
        elif self._run_in_pieces:
            d = self._steps_before(plan.decode_ctx, plan.max_steps, self.env.now, arrival, sync)
        else:   # timed whole, then cut
            d = self.cost.decode_run_seconds(plan.decode_ctx, plan.max_steps)
            ends = step_ends(self.env.now, d)
            keep = _steps_to_keep(ends, arrival, sync)
            d, self._cut_ends = d[:keep], ends[:keep]
        self._decode_step_s = float(d[-1])
        return d

    def _steps_before(self, ctx: np.ndarray, max_steps: int, now: float, arrival_s: float, sync_s: float) -> np.ndarray:
        """The times of the steps of a decode run of at most `max_steps` that `_steps_to_keep` keeps.

        Only those steps are timed, not all `max_steps` (a replica in a fleet with an autoscaler
        cuts its runs at every tick). A first call covers the steps the last decode step's length
        says will fit, with two to spare; if all of them are kept, one more call times the rest of
        the run. The result is the same as timing all `max_steps` and cutting: a run's step k
        depends only on the contexts plus k (the `decode_run_seconds` contract), and step ends are
        sums from the start (`step_ends`)."""
        first = max_steps
        gap_s = min(arrival_s, sync_s) - now
        if self._decode_step_s > 0 and gap_s < max_steps * self._decode_step_s:
            first = min(max_steps, 2 + int(max(gap_s, 0.0) / self._decode_step_s))
        d = self.cost.decode_run_seconds(ctx, first)
        ends = step_ends(now, d)
        keep = _steps_to_keep(ends, arrival_s, sync_s)
        if keep == first < max_steps:   # every step timed is kept: time the rest too
            d = np.concatenate((d, self.cost.decode_run_seconds(ctx + first, max_steps - first)))
            ends = step_ends(now, d)
            keep = _steps_to_keep(ends, arrival_s, sync_s)
        self._cut_ends = ends[:keep]   # the kept steps' ends (a prefix's sums are the sums' prefix)
        return d[:keep]

    def _step_loop(self):
        env, sched, rec = self.env, self.scheduler, self.recorder
        iterations = 0
        while True:
            plan = sched.schedule()
            if plan is None:
                if self._arrivals_done:
                    if self.clients is not None and not np.isfinite(rec.w1):  # offline: up to the last answer
                        rec.w1 = env.now
                    rec.on_end(env.now)   # an idle tail up to the end of the measured window
                    return
                if self._wake.triggered:
                    self._wake = env.event()
                idle_from = env.now
                yield self._wake
                if self.failed:
                    return
                rec.on_idle(idle_from, env.now)
                continue
            durations = self._durations(plan)
            _check_step_times(durations)
            start = env.now
            if len(durations) == 1:
                yield env.timeout(float(durations[0]))
            else:   # the clock lands on the last step's end exactly as commit computes it (step_ends)
                ends = self._cut_ends if self._cut_ends is not None else step_ends(start, durations)
                self._run_ends, self._cut_ends = ends, None
                self._run_sensitive = plan.arrival_sensitive
                try:
                    yield _TimeoutAt(env, float(ends[-1]))
                except simpy.Interrupt:   # a request came: the run ends after its step in flight (_end_run_now)
                    ends = self._run_ends
                    durations = durations[:len(ends)]
                    yield _TimeoutAt(env, float(ends[-1]))
                self._run_ends = None
            if self.failed:  # the replica died during these steps: nothing of them happened
                return
            if self._decode_run_ran is not None and plan.max_steps > 1:   # a cost model that counts them (step tables)
                self._decode_run_ran(plan.decode_ctx, len(durations))
            outcome = sched.commit(plan, start, durations)
            if self._run_queue is not None:
                self._queue_by_step(outcome, ends)
                self._run_queue = None
            if self.on_finished is not None:
                if outcome.finished_ids:
                    self.on_finished(self, outcome.finished_ids)
            elif (self.t.next_turn is not None or self.clients is not None) and outcome.finished_ids:
                self._answered(outcome.finished_ids)
            rec.on_steps(start, outcome, durations)
            if outcome.extra_gap_count or len(outcome.extra_gaps_s):
                rec.on_extra_gaps(outcome.extra_gaps_s, outcome.extra_gap_value, outcome.extra_gap_count)
            iterations += 1
            if self.progress is not None and iterations % 512 == 0:
                self.progress(self._next_arrival + self._sent_follow_ups, self.t.num_requests, env.now)


def _steps_starting_before(ends: np.ndarray, at_s: float) -> int:
    """How many of consecutive steps ending at `ends` start before `at_s` (the first always
    counts; a later one starts where the one before it ends)."""
    return 1 + int(ends[:-1].searchsorted(at_s, side="left"))   # the method, not the np.* wrapper


def _steps_to_keep(ends: np.ndarray, arrival_s: float, sync_s: float) -> int:
    """How many of consecutive steps ending at `ends` (the first starts now) one commit takes: those
    that start before the arrival, and of them those that end by the sync (always the first)."""
    keep = _steps_starting_before(ends, arrival_s) if arrival_s < np.inf else len(ends)
    if sync_s < np.inf:
        keep = min(keep, max(1, int(ends.searchsorted(sync_s, side="right"))))
    return keep


class _TimeoutAt(simpy.events.Timeout):
    """A timeout that fires at the absolute time `at` (>= now), so the clock then reads `at`
    exactly. `env.timeout(at - now)` fires at `now + (at - now)` rounded, which can miss `at` by an
    ulp, and some floats no delay reaches (when `now` has a finer ulp than `at`, every sum rounds
    to even). A run's end is its steps' ends summed from its start (step_ends), so the clock, the
    token times and later events agree, whichever way the steps are grouped. It is simpy's own
    Timeout, queued the way `Environment.schedule` queues one (simpy 4: `_queue`, `_eid`)."""

    def __init__(self, env: simpy.Environment, at: float) -> None:
        # Timeout.__init__ would queue it at now + delay: its fields are set here instead
        if at < env.now:
            raise ValueError(f"{at!r} is in the past (now {env.now!r})")
        self.env, self.callbacks, self._value, self._delay, self._ok = env, [], None, at - env.now, True
        heapq.heappush(env._queue, (at, simpy.events.NORMAL, next(env._eid), self))


def _check_step_times(durations: np.ndarray) -> None:
    """A step time must be finite, non-negative and plausible, or time stops making sense (an
    infinite step never ends; a step of 1e300 s swallows every later arrival)."""
    if len(durations) == 1:  # the common case, without numpy reductions (the same test)
        d = float(durations[0])
        if 0 <= d <= MAX_STEP_S:
            return
    elif durations.size and 0 <= _min_reduce(durations) and _max_reduce(durations) <= MAX_STEP_S:   # NaN, inf fail these
        return
    if durations.size and not (np.all(np.isfinite(durations)) and durations.min() >= 0
                               and durations.max() <= MAX_STEP_S):
        bad = next(float(d) for d in durations if not (np.isfinite(d) and 0 <= d <= MAX_STEP_S))
        raise SimkvError(f"the cost model gave a step time of {bad:.3g} s (at most {MAX_STEP_S:.0e} s is plausible)",
                         field="cost", fix="check the GPU's bandwidth and compute numbers and engine.host_overhead_s "
                         "in the scenario, its catalog files and --set overrides")
