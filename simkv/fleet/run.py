"""Simulate a fleet: every replica a full simkv engine on one simpy clock, a router in front.

A request arrives at the fleet, the router picks a live replica (after `decision_delay_s`), the
replica serves it as a lone replica would. A finished turn's follow-up goes back through the router.
Closed-loop and offline clients (simkv.workload.clients) belong to the fleet: each client's next
request goes through the router, and the measured window is set as a lone replica sets it.
A replica that fails drops what it was computing; its running and queued requests restart on
replicas the router picks (counted in `retries`; their latency runs from the original arrival). With
no live replica left a request fails with that reason. Every request ends served or rejected with a
reason; the run checks that none is lost.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

import numpy as np
import simpy

from simkv.engine import ProgressFn, Replica
from simkv.fleet.autoscale import Autoscaler
from simkv.fleet.disagg import Disaggregation, ReceivingScheduler, link_model
from simkv.fleet.pools import Pool, build_pools
from simkv.fleet.router import Router
from simkv.request import FAILED_NO_REPLICA, REJECTED, SESSION_ENDED, WAITING
from simkv.workload.clients import ClientPool
from simkv.workload.stream import RequestStream

if TYPE_CHECKING:  # the schema is an input: the core never imports it at run time
    from simkv.scenario import Scenario



class Fleet:
    """The pools' replicas on one clock, the router, the fleet-level arrivals, follow-ups and faults."""

    def __init__(self, scenario: Scenario, stream: RequestStream, subs, inputs_for) -> None:
        self.scenario = scenario
        spec = scenario.fleet
        self.spec = spec
        self.pools: list[Pool] = build_pools(scenario, stream, subs, inputs_for)
        self.env = env = simpy.Environment()
        dis = spec.disaggregation
        roles = {}
        if dis is not None:
            roles = {next(p.index for p in self.pools if p.name == dis.prefill): "prefill",
                     next(p.index for p in self.pools if p.name == dis.decode): "decode"}
            _prefill_only(next(p for p in self.pools if roles.get(p.index) == "prefill").sim.table)
        self.replicas: list[Replica] = []
        self.pool_index: list[int] = []      # global replica -> pool
        self.local_index: list[int] = []     # global replica -> index within its pool
        for pool in self.pools:
            for r, (sched, rec) in enumerate(zip(pool.schedulers, pool.recorders)):
                if roles.get(pool.index) == "decode":
                    sched = ReceivingScheduler(sched)
                rep = Replica(env, pool.sim.table, sched, pool.sim.cost, rec, routed=True)
                rep.on_finished = self._finished
                rep.next_sync_hint = self._next_sync_s
                rep.index = len(self.replicas)
                self.replicas.append(rep)
                self.pool_index.append(pool.index)
                self.local_index.append(r)
        # static request columns the router may read (not the prefill pool's: its outputs are capped at 1)
        self.t = t = next(p for p in self.pools if roles.get(p.index) != "prefill").sim.table
        n = t.num_requests
        self.pool_of = np.full(n, -1, dtype=np.int64)
        self.replica_of = np.full(n, -1, dtype=np.int64)
        self.retries = np.zeros(n, dtype=np.int64)
        self.failed_at = [None] * len(self.replicas)
        self.routable = np.ones(len(self.replicas), dtype=bool)    # the router may send it requests
        self.lifetimes: list[list] = [[[0.0, None]] for _ in self.replicas]   # [start, stop] GPU spans
        self._closed = False
        self.router = Router(spec.router, t, [p.sim.memory.capacity_tokens for p in self.pools
                                              for _ in range(p.num_replicas)], scenario.run.seed)
        self._candidates = self._class_candidates()
        self.disagg: Disaggregation | None = None
        if dis is not None:
            pre = [g for g, pi in enumerate(self.pool_index) if roles.get(pi) == "prefill"]
            dec = [g for g, pi in enumerate(self.pool_index) if roles.get(pi) == "decode"]
            self._candidates = [np.array(pre, dtype=np.int64)] * max(1, len(scenario.workload.classes or []))
            dsc = next(p for p in self.pools if roles.get(p.index) == "decode").scenario
            link = link_model(dis.link, dsc.hardware.gpu if isinstance(dsc.hardware.gpu, str) else "custom",
                              dsc.gpu_spec())
            kv = dsc.model_spec().kv_bytes_per_token(dsc.engine.kv_cache_dtype, dsc.hardware.tensor_parallel)
            self.disagg = Disaggregation(self, pre, dec, link, kv)
            self._roles = roles
        self._outstanding = [set() for _ in self.replicas]
        self._num_outstanding = 0
        self._pending: list[float] = []      # heap: times of follow-ups and deliveries under way
        self._groups: dict[int, int] = {}    # fan-out request (parallel sampling) -> its replica
        fan_out = np.r_[False, t.group[1:] == t.group[:-1]] if n else np.zeros(0, bool)
        self._fans = set(t.group[fan_out | np.r_[fan_out[1:], False]].tolist()) if n else set()
        self._initial = (np.flatnonzero(~np.isnan(t.arrival_s)) if t.next_turn is not None else np.arange(n))
        self.clients: ClientPool | None = None
        if getattr(t, "clients", None) is not None:
            self._initial = np.zeros(0, dtype=np.int64)   # every request is sent by a client
        self._next_initial = 0
        self._arrivals_done = False
        self._fault_times = sorted(f.at_s for f in spec.faults)
        self.autoscaler = Autoscaler(self) if spec.autoscale is not None else None
        self._plan = self._static_plan()
        if getattr(t, "clients", None) is not None:
            self._start_clients()
        self._arrival_process = env.process(self._arrivals())
        for f in spec.faults:
            pool = next(p for p in self.pools if p.name == f.pool)
            g = sum(p.num_replicas for p in self.pools[:pool.index]) + f.replica
            env.process(self._fault(g, f.at_s))

    # ------------------------------------------------------------ candidates
    def _class_candidates(self) -> list[np.ndarray] | None:
        """by_class: per class, the global replicas of the pools that serve it."""
        if self.spec.router.policy != "by_class":
            return None
        names = [c.name for c in self.scenario.workload.classes]
        named = {c for p in self.pools for c in (p.classes or [])}
        out = []
        for c in names:
            pools = [p.index for p in self.pools if (p.classes is not None and c in p.classes)
                     or (p.classes is None and c not in named)]
            out.append(np.array([g for g, pi in enumerate(self.pool_index) if pi in pools], dtype=np.int64))
        return out

    def _live(self, rid: int) -> np.ndarray:
        cands = (self._candidates[int(self.t.class_id[rid]) if self.t.class_id is not None else 0]
                 if self._candidates is not None
                 else np.arange(len(self.replicas)))
        return cands[[self.routable[g] and not self.replicas[g].failed for g in cands.tolist()]]

    def _static_plan(self) -> np.ndarray | None:
        """round_robin and random decide without looking at load, so without follow-up turns or a
        decision delay every arrival's replica is known in advance: drawn here at once (until a
        fault, after which the router decides each request as it comes)."""
        t, spec = self.t, self.spec.router
        if (spec.policy not in ("round_robin", "random") or t.next_turn is not None or spec.decision_delay_s > 0
                or getattr(t, "clients", None) is not None
                or self.spec.disaggregation is not None or self.autoscaler is not None):
            return None
        n, k = t.num_requests, len(self.replicas)
        starts = np.r_[True, t.group[1:] != t.group[:-1]] if n else np.zeros(0, bool)
        picks = (np.arange(int(starts.sum())) % k if spec.policy == "round_robin"
                 else self.router.rng.integers(k, size=int(starts.sum())))
        plan = picks[np.cumsum(starts) - 1] if n else np.zeros(0, dtype=np.int64)
        return plan

    # ------------------------------------------------------------ events
    def _next_sync_s(self) -> float:
        """The next time the replicas' state must be up to date (bounds their fast-forward): a fault
        (the steps in flight are lost, those before it are not) or an autoscaler tick (the policy
        reads the replicas' state). Requests need no bound: a replica ends its run when one reaches
        it (Replica._end_run_now)."""
        nxt = self._fault_times[0] if self._fault_times else np.inf
        if self.autoscaler is not None:
            nxt = min(nxt, self.autoscaler.next_tick)
        return nxt

    def _arrivals(self):
        env, arrival = self.env, self.t.arrival_s
        for i, rid in enumerate(self._initial.tolist()):
            delay = arrival[rid] - env.now
            if delay > 0:
                yield env.timeout(delay)
            self._next_initial = i + 1
            if self._plan is not None:
                self._deliver(rid, int(self._plan[rid]))
                continue
            self._route(rid)
        self._arrivals_done = True
        self._maybe_close()

    def _route(self, rid: int) -> None:
        """The router decides now; the request reaches its replica after the decision delay."""
        g = self._target(rid)
        delay = self.spec.router.decision_delay_s
        if g is None:
            self._fail(rid)
        elif delay > 0:
            at = self.env.now + delay
            heapq.heappush(self._pending, at)
            self._num_outstanding += 1     # in the router's hands: the fleet must not close
            self.env.process(self._deliver_later(rid, g, at))
        else:
            self._deliver(rid, g)

    def _target(self, rid: int) -> int | None:
        cands = self._live(rid)
        if not len(cands):
            return None
        group = int(self.t.group[rid])
        if group in self._fans:   # the sequences of one request run together
            g = self._groups.get(group)
            if g is not None and not self.replicas[g].failed:
                return g
        g = self.router.pick(rid, cands, self.env.now)
        if group in self._fans:
            self._groups[group] = g
        return g

    def _deliver_later(self, rid: int, g: int, at: float):
        yield self.env.timeout(at - self.env.now)
        heapq.heappop(self._pending)
        self._num_outstanding -= 1
        if self.replicas[g].failed:
            g = self._target(rid)
            if g is None:
                self._fail(rid)
                self._maybe_close()
                return
        self._deliver(rid, g)

    def _deliver(self, rid: int, g: int) -> None:
        rep = self.replicas[g]
        self.pool_of[rid], self.replica_of[rid] = self.pool_index[g], g
        self.router.sent(g, rid)
        self._outstanding[g].add(rid)
        self._num_outstanding += 1
        if not rep.submit(rid):
            self._outstanding[g].discard(rid)
            self._num_outstanding -= 1
            self.router.answered(g, rid, self.env.now, refused=True)
            if self.clients is not None:   # a refused request releases its client
                self._release(rid)
            self._maybe_close()

    def _finished(self, rep: Replica, ids: tuple[int, ...]) -> None:
        g, now, t = rep.index, self.env.now, rep.t
        dis = self.disagg
        if dis is not None and dis.is_prefill[g]:
            ids = self._prefilled(rep, ids)
        for rid in ids:
            if rid not in self._outstanding[g]:
                continue
            self._outstanding[g].discard(rid)
            self._num_outstanding -= 1
            self.router.answered(g, rid, now)
            if self.autoscaler is not None:
                self.autoscaler.answered(g)
            nxt = int(t.next_turn[rid]) if t.next_turn is not None else -1
            if nxt < 0 and self.clients is not None:
                self._release(rid)
            if nxt >= 0:
                at = now + float(t.think_s[nxt])
                heapq.heappush(self._pending, at)
                self.env.process(self._follow_up(nxt, at))
        self._maybe_close()

    def _prefilled(self, rep: Replica, ids: tuple[int, ...]) -> tuple[int, ...]:
        """P/D: prefill replica `rep` sampled these requests' first tokens. A one-token answer is
        complete there; the others go to a decode replica (they stay outstanding)."""
        g, dis, done = rep.index, self.disagg, []
        decode_t = self.t
        for rid in ids:
            if rid not in self._outstanding[g]:
                continue
            if int(decode_t.output_tokens[rid]) <= 1:
                done.append(rid)
                continue
            self._outstanding[g].discard(rid)
            self.router.answered(g, rid, self.env.now)
            if decode_t.status[rid] == REJECTED:   # the decode pool can never serve it
                self.pool_of[rid] = next(pi for pi, r in self._roles.items() if r == "decode")
                self._num_outstanding -= 1
                if self.clients is not None:
                    self._release(rid)
                continue
            dis.handoff(g, rid, rep.t, decode_t)
        return tuple(done)

    def _follow_up(self, rid: int, at: float):
        yield self.env.timeout(at - self.env.now)
        heapq.heappop(self._pending)
        self.t.arrival_s[rid] = self.env.now   # one arrival column shared by every pool's table
        self._route(rid)
        self._maybe_close()

    def _fault(self, g: int, at: float):
        yield self.env.timeout(at)
        rep = self.replicas[g]
        self._fault_times.pop(0)
        self._plan = None   # from now on the router decides each request as it comes
        if rep.failed or self._closed:
            return
        rep.failed = True
        self.failed_at[g] = self.env.now
        self.lifetimes[g][-1][1] = self.env.now
        rep.close()
        self.router.forget(g)
        lost = sorted(self._outstanding[g])
        self._outstanding[g] = set()
        self._num_outstanding -= len(lost)
        for rid in lost:   # restart from scratch elsewhere; latency still counts from the arrival
            _reset(rep.t, rid)
            self.retries[rid] += 1
            group = int(self.t.group[rid])
            self._groups.pop(group, None)
            self._route(rid)
        self._maybe_close()

    def _fail(self, rid: int) -> None:
        """No live replica can take the request: it fails, and its conversation ends."""
        p = int(self.pool_of[rid]) if self.pool_of[rid] >= 0 else 0
        t = self.pools[p].sim.table
        self.pool_of[rid] = p
        t.status[rid] = REJECTED
        t.reject_reason[rid] = FAILED_NO_REPLICA
        if self.clients is not None:
            self._release(rid)
        nxt = t.next_turn
        while nxt is not None and nxt[rid] >= 0:
            rid = int(nxt[rid])
            t.status[rid] = REJECTED
            if t.reject_reason[rid] == 0:
                t.reject_reason[rid] = SESSION_ENDED

    def _maybe_close(self) -> None:
        if self._arrivals_done and not self._pending and self._num_outstanding == 0 and not self._closed:
            self._closed = True
            if self.clients is not None:   # offline (or nothing sent after the warm-up): up to the last answer
                for rec in self._recorders():
                    if not np.isfinite(rec.w1):
                        rec.w1 = self.env.now
            for spans in self.lifetimes:   # what is still up stops with the last answer
                if spans and spans[-1][1] is None:
                    spans[-1][1] = self.env.now
            if self.autoscaler is not None:
                self.autoscaler.closed(self.env.now)
            for rep in self.replicas:
                if not rep.failed:
                    rep.close()

    # ------------------------------------------------------------ closed-loop clients
    def _recorders(self) -> list:
        return [rec for p in self.pools for rec in p.recorders]

    def _start_clients(self) -> None:
        """One ClientPool for the fleet; as on a lone replica (simkv.engine.Replica._start_clients)."""
        t = self.t
        self.clients = pool = ClientPool(t.clients, t.num_requests, t.session)
        if t.clients.warmup_requests:   # the window starts when the first measured request is sent
            self._set_w0(np.inf)
        for at, group in pool.start():
            heapq.heappush(self._pending, at)
            self.env.process(self._send(group, at))

    def _set_w0(self, w0: float) -> None:
        for rec in self._recorders():
            rec.w0 = w0
        for p in self.pools:
            for sched in p.schedulers:
                sched.batch.warmup_s = w0

    def _release(self, rid: int) -> None:
        nxt = self.clients.release(rid, self.env.now)
        if nxt is not None:
            at, group = nxt
            heapq.heappush(self._pending, at)
            self.env.process(self._send(group, at))

    def _send(self, group: int, at: float):
        """A client sends its group's next request at `at`; the router sees it after the frontend's cost."""
        env, t, pool = self.env, self.t, self.clients
        yield env.timeout(at - env.now)
        heapq.heappop(self._pending)
        rid = pool.take(group)
        if rid is not None:
            for p in self.pools:
                p.sim.table.sent_s[rid] = env.now
            warm = t.clients.warmup_requests
            if warm and pool.sent == warm + 1:
                self._set_w0(env.now)
            recs = self._recorders()
            if pool.exhausted and env.now > recs[0].w0:   # arrivals end: the measured window closes
                for rec in recs:
                    rec.w1 = env.now
            delay = float(t.frontend_s[rid]) if t.frontend_s is not None else 0.0
            if delay > 0:
                heapq.heappush(self._pending, env.now + delay)
                yield env.timeout(delay)
                heapq.heappop(self._pending)
            t.arrival_s[rid] = env.now   # one arrival column shared by every pool's table
            self._route(rid)
        self._maybe_close()

    def run(self, progress: ProgressFn | None = None) -> None:
        """Run the fleet to its end: replicas that never affect one another each in a fused loop
        where they fit one (simkv.fused.fleet), else all of them on the simpy clock."""
        from simkv.fused import fleet as fused_fleet   # numba's loops, imported only when a fleet runs
        end = fused_fleet.run_fused(self, progress)
        if end is None:
            self.env.run(until=simpy.AllOf(self.env, [r.done for r in self.replicas] + [self._arrival_process]))
            end = self.env.now
        if progress is not None:
            progress(self.t.num_requests, self.t.num_requests, end)


def _prefill_only(t) -> None:
    """The prefill pool's table: every request ends when its first token is sampled (new arrays:
    the other pools' tables may share the stream's)."""
    t.output_tokens = np.minimum(t.output_tokens, 1)
    t.max_new_tokens = np.minimum(t.max_new_tokens, 1)
    t.final_kv_tokens = t.prompt_tokens + t.output_tokens - 1


def _reset(t, rid: int) -> None:
    t.status[rid] = WAITING
    t.generated[rid] = 0
    for col in (t.first_scheduled_s, t.first_token_s, t.finish_s, t.last_token_s):
        col[rid] = np.nan
    t.tbt_max_s[rid] = 0.0
    for col in (t.prefix_hit_tokens, t.prefix_query_tokens, t.prefix_hit_blocks, t.prefix_query_blocks):
        col[rid] = 0


# ---------------------------------------------------------------- results
