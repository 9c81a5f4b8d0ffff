"""Fused fleets: a fleet of replicas that fit a fused loop (paged FCFS, TGI, vLLM V1), run in compiled loops.

Two ways, chosen here (`run_fused`):

- **apart** (`why_not`): behind a router that reads no load, each replica in its own loop, one
  after another (below);
- **in lockstep** (`why_not_lockstep`, `run_lockstep`): one pool behind least_loaded (or session
  affinity where every request is its own group), every replica and the router in one loop
  (simkv.fused.fleet_loop), each replica run up to each hand-over.

A fleet (simkv.fleet.run.Fleet) couples its replicas only through the router. A router that
decides without looking at load (round robin, random: `Fleet._static_plan`) fixes every request's
replica before the run, and without follow-up turns, closed-loop clients, a decision delay, faults,
autoscaling or P/D hand-offs nothing a replica does reaches another. Each replica then serves the
requests routed to it at the times the fleet's arrival process hands them over, as a routed
`Replica` would (`routed` in simkv.fused.loop_parts), and the replicas can run one after another,
each in the fused loop its pool fits (simkv.fused.dispatch).

What couples them is the end: the fleet closes when its last request is answered (or its last
arrival refused), and every replica idles up to then (`Recorder.on_idle`, `on_end`), so the loops
stop at their last step and the tails are added here. The fleet is left as `Fleet.run` leaves it
for `simkv.fleet.summary.fleet_result`: the pools' request tables, each replica's recorder, where
each request went, the router's decisions and the replicas' lifetimes. Where a loop hands its
replica back (a BAIL), nothing is written and the fleet runs on simpy as before.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from simkv import compiled, fused
from simkv.build import Simulation
from simkv.fleet.summary import subset
from simkv.fused import layout as lp
from simkv.fused import paged_fcfs, tgi, vllm_v1
from simkv.fused.dispatch import FLEET_ENGINES as ENGINES
from simkv.fused.driver import (BAIL_REASONS, CHUNK_ITERATIONS, ProgressFn, bin_gaps, cost_tables, gap_buffers,
                                limits_f, scratch, series_into)
from simkv.metrics.compiled_recorder import CompiledRecorder, new_recorder


def why_not(fleet) -> str | None:
    """Why the replicas of `fleet` (a simkv.fleet.run.Fleet) cannot run apart in fused loops."""
    spec = fleet.spec
    if fleet._plan is None:
        return "the router decides as requests come (load, sessions, a delay, clients, P/D or autoscaling)"
    if spec.faults:
        return "replica faults"
    return _requests_and_pools_fit(fleet)


def why_not_lockstep(fleet) -> str | None:
    """Why `fleet` cannot run as one lockstep loop (simkv.fused.fleet_loop), or None if it can."""
    spec, t, router = fleet.spec, fleet.t, fleet.spec.router
    if router.policy not in ("least_loaded", "session") or router.decision_delay_s > 0:
        return "not a least-loaded router that decides at once"
    if spec.faults or fleet.autoscaler is not None or fleet.disagg is not None or fleet.clients is not None:
        return "faults, autoscaling, P/D or closed-loop clients"
    if t.next_turn is not None or fleet._fans or (router.policy == "session" and t.session is not None):
        return "sessions or parallel sampling"
    if len(fleet.pools) != 1:
        return "more than one pool"
    return _requests_and_pools_fit(fleet)


def run_fused(fleet, progress: ProgressFn | None = None) -> float | None:
    """Run `fleet` in fused loops: the fleet's end time, the fleet filled in as `Fleet.run` leaves
    it; None, nothing changed, where it must run on simpy (`why_not` and `why_not_lockstep` both
    find something, numba is missing or does not pay for a run this long, or a loop's BAIL:
    simkv.fused.last_outcome says)."""
    fused.last_outcome[0] = ""
    n = fleet.t.num_requests
    if not fused.allowed() or not compiled.wanted(n):
        return None
    parts = compiled.kernels("simkv.fused.loop_parts")
    if parts is None:
        return None
    if why_not(fleet) is not None:
        return run_lockstep(fleet, progress) if why_not_lockstep(fleet) is None else None
    plan = fleet._plan
    fired = np.empty(n)
    parts.fire_times(np.ascontiguousarray(fleet.t.arrival_s, float), fired)   # Fleet._arrivals' clock
    done, runs, reached = 0, [], [0.0]
    engines = [_engine(pool.sim) for pool in fleet.pools]
    for g in range(len(fleet.replicas)):
        rows = np.flatnonzero(plan == g)
        engine = engines[fleet.pool_index[g]]
        if not len(rows):
            runs.append((g, rows, engine, None, None))
            continue
        sim = _replica_sim(fleet, g, rows)

        def replica_progress(i: int, _: int, now: float, before: int = done) -> None:
            reached[0] = max(reached[0], now)   # (replicas run one after another: the clock shown never goes back)
            progress(before + i, n, reached[0])
        out = engine.run_fused(sim, replica_progress if progress is not None else None, fired[rows])
        if out is None:   # handed back: the whole fleet runs on simpy
            return None
        runs.append((g, rows, engine, sim, out))
        done += len(rows)
    # the fleet closes at its last answer, or at its last arrival if that comes later (refused)
    end = max([float(fired[-1])] + [out[1] for *_, out in runs if out is not None])
    for g, rows, engine, sim, out in runs:
        pool, r = fleet.pools[fleet.pool_index[g]], fleet.local_index[g]
        if out is None:   # never sent anything: idle from the start
            rec, now = pool.recorders[r], 0.0
        else:
            rec, now = out
            for key in engine.COLUMNS_WRITTEN:   # each row is touched by one replica only
                getattr(pool.sim.table, key)[rows] = getattr(sim.table, key)
            pool.recorders[r] = fleet.replicas[g].recorder = rec
        rec.on_idle(now, end)   # woken by the fleet's close (a no-op for the replica that closes it)
        rec.on_end(end)
        fleet.pool_of[rows], fleet.replica_of[rows] = pool.index, g
    fleet.router.decisions[:] = np.bincount(plan, minlength=len(fleet.replicas))
    fleet.lifetimes = [[[0.0, end]] for _ in fleet.replicas]
    fleet._closed = True
    fused.last_outcome[0] = "fused fleet"
    return end


def _requests_and_pools_fit(fleet) -> str | None:
    """Why the fleet's requests or some pool's replicas fit no fused engine (None: all fit). A pool's
    replicas are built alike (simkv.fleet.pools), so its first one answers for all."""
    a = fleet.t.arrival_s
    if fleet.t.num_requests == 0:
        return "no requests"
    if not np.all(np.isfinite(a)) or (len(a) > 1 and np.any(a[1:] < a[:-1])):
        return "arrival times not finite and sorted"
    for pool in fleet.pools:
        if _engine(pool.sim) is None:
            return f"pool {pool.name}: no fused engine fits (" + "; ".join(e.why_not(pool.sim) for e in ENGINES) + ")"
    return None


def _replica_sim(fleet, g: int, rows: np.ndarray) -> Simulation:
    """Replica g as a simulation of its own: its pool's, with its scheduler and a table of the
    requests `rows` routed to it."""
    pool = fleet.pools[fleet.pool_index[g]]
    return dataclasses.replace(pool.sim, table=subset(pool.sim.table, rows),
                               scheduler=pool.schedulers[fleet.local_index[g]])


def _engine(sim: Simulation):
    """The fused engine (module) whose `why_not` finds nothing in `sim`, or None."""
    return next((e for e in ENGINES if e.why_not(sim) is None), None)


def ring_size(n: int, replicas: int, batch: int, max_in_system: int | None) -> int:
    """Slots of each replica's queue (a ring) in a lockstep fleet of `n` requests: a TGI replica holds
    at most max_concurrent_requests; a least-loaded FCFS replica about its share of the requests,
    and the loop hands back a fleet whose replica could outgrow that (BAIL_RING)."""
    return min(n, max_in_system if max_in_system is not None else 2 * (n // replicas) + batch) + 2


def run_lockstep(fleet, progress: ProgressFn | None = None) -> float | None:
    """Run a one-pool fleet of paged FCFS or TGI replicas behind least_loaded in one compiled loop
    (simkv.fused.fleet_loop): the fleet's end, or None (nothing changed) where the loop hands it back."""
    pool = fleet.pools[0]
    sim, t, r = pool.sim, pool.sim.table, len(fleet.replicas)
    engine = _engine(sim)
    fl, k = compiled.kernels("simkv.fused.fleet_loop"), compiled.kernels(engine.KERNEL)
    if fl is None or k is None:
        return None
    s, c, n = sim.scheduler, sim.cost, t.num_requests
    batch, max_tokens = engine.sizes(s)
    tables = cost_tables(c, batch, max_tokens)
    if tables is None:
        fused.last_outcome[0] = "bailed: decode-attention curves of different lengths"
        return None
    recs = [new_recorder(sim.memory.capacity_tokens, sim.measure_start_s, sim.measure_end_s,
                         sim.scenario.run.time_series_points, True) for _ in range(r)]
    if not isinstance(recs[0], CompiledRecorder) or recs[0].capacity != s.kv.capacity_tokens:
        return None
    out = {name: getattr(t, name).copy() for name in engine.COLUMNS_WRITTEN}   # every replica's rows
    i64 = np.int64
    arrival = np.ascontiguousarray(t.arrival_s, float)
    fired = np.empty(n)
    compiled.kernels("simkv.fused.loop_parts").fire_times(arrival, fired)   # Fleet._arrivals' clock
    st_i, st_f = np.zeros((r, k.ST_I_LEN), i64), np.zeros((r, k.ST_F_LEN))
    st_i[:, lp.S_FREE] = s.kv.num_blocks
    st_i[:, lp.S_ROUTED] = st_i[:, lp.S_LOCKSTEP] = 1
    st_i[:, lp.S_SAMPLE] = recs[0]._next_sample
    st_f[:, lp.SF_DT] = recs[0].dt
    rec_f, rec_i, hist = (np.stack([getattr(x, a) for x in recs]) for a in ("_f", "_i", "_gap_hist"))
    rows_i, rows_f = np.zeros((r, recs[0].max_points + 2, 8), i64), np.zeros((r, recs[0].max_points + 2, 2))
    gap_v, gap_m = gap_buffers(batch, s.max_repeat, (r,))
    fl_i, fl_f = np.zeros(fl.FL_I_LEN, i64), np.zeros(fl.FL_F_LEN)
    fl_i[fl.FL_BY_TOKENS] = int(fleet.spec.router.load == "tokens")
    fl_i[fl.FL_CHUNK] = CHUNK_ITERATIONS
    fl_f[fl.FL_STATE_INTERVAL] = fleet.spec.router.state_interval_s
    decisions, replica_of = np.zeros(r, i64), np.full(n, -1, i64)
    req_tokens = (fleet.t.prompt_tokens + fleet.t.max_new_tokens).astype(float)   # Router._tokens
    requests = (arrival, fired, np.zeros(0), np.ascontiguousarray(t.prompt_tokens, i64),
                np.ascontiguousarray(t.output_tokens, i64), np.ascontiguousarray(t.final_kv_tokens, i64))
    ring = ring_size(n, r, batch, s.max_concurrent_requests if engine is tgi else None)
    per_replica = (st_i, st_f, np.zeros((r, lp.DEC_I_ROWS, batch + 1), i64), np.zeros((r, lp.DEC_F_ROWS, batch + 1)),
                   np.zeros((r, ring), i64))
    recording = (rec_f, rec_i, hist, rows_i, rows_f, gap_v, gap_m, *scratch(batch, s.max_repeat, (r,)))
    # answers the router has not seen yet: as many as it counts outstanding, so with a state interval
    # also those answered since its last refresh (about a replica's share at most)
    answers = ring if fleet.spec.router.state_interval_s == 0 else max(ring, ring_size(n, r, batch, None))
    fleet_state = (np.zeros((r, answers), i64), req_tokens, np.zeros((r, 2)), fl_i, fl_f, np.full(r, np.inf), decisions,
                   replica_of)
    config = (engine.loop_cfg(k, sim, recs[0].max_points), limits_f(c, s.batch.warmup_s), *tables.values())
    if engine is paged_fcfs:
        loop, pre_i = fl.run, None
        args = (*requests, *out.values(), *config, *per_replica, *recording,
                np.zeros((r, k.PLAN_I_ROWS, batch), i64), *fleet_state)
    elif engine is vllm_v1:
        shape = vllm_v1.table_sizes(sim)
        if shape is None or r * shape[0] * shape[1] > vllm_v1.MAX_TABLE_ENTRIES:
            return None
        width, slots = shape
        st_i[:, k.S_NSLOTS] = slots
        columns = [v for name, v in out.items() if name != "arrival_s"]
        state = vllm_v1.replica_state(k, sim, width, slots, 0, (r,))
        reqs = vllm_v1._requests(t, s.kv.block_size)
        if reqs is None:
            return None
        loop, pre_i = fl.run_v1, None
        args = (np.zeros(0, i64), np.zeros(0), arrival, fired, *reqs[3:], *columns, config[0], config[1],
                vllm_v1.attention_cfg(k, c), *config[2:], *per_replica, state[0], np.zeros(n, i64), *state[1:10],
                *recording, *state[10:], *fleet_state)
    else:
        loop, pre_i = fl.run_tgi, np.zeros((r, k.PRE_I_ROWS, batch + 1), i64)
        args = (*requests, np.ascontiguousarray(t.max_new_tokens, i64), *out.values(), *config, *per_replica, pre_i,
                *recording, *fleet_state)
    while True:
        code = loop(*args)
        for g in range(r):
            bin_gaps(hist[g], gap_v[g], gap_m[g], st_i[g])
        if code == lp.BAIL:
            reason = int(st_i[int(fl_i[fl.FL_REPLICA]), lp.S_BAIL])
            fused.last_outcome[0] = "bailed: " + BAIL_REASONS.get(reason, "unknown")
            return None
        if code == lp.DONE:
            break
        if code == getattr(k, "CALL", -1):   # a TGI replica's prefill attention, priced by the cost model
            g = int(fl_i[fl.FL_REPLICA])
            tgi.price_prefill(k, c, pre_i[g], st_i[g], st_f[g])
        elif progress is not None:
            progress(int(fl_i[fl.FL_NEXT]), n, float(st_f[:, lp.SF_NOW].max()))
    for name, values in out.items():
        getattr(t, name)[:] = values
    end = max(float(fired[-1]), float(st_f[:, lp.SF_NOW].max()))
    for g, rec in enumerate(recs):
        rec._f[:], rec._i[:], rec._gap_hist[:] = rec_f[g], rec_i[g], hist[g]
        series_into(rec, rows_i[g], rows_f[g], st_i[g], st_f[g])
        rec.on_idle(float(st_f[g, lp.SF_NOW]), end)   # woken by the fleet's close
        rec.on_end(end)
        pool.recorders[g] = fleet.replicas[g].recorder = rec
    fleet.pool_of[:], fleet.replica_of[:] = pool.index, replica_of
    fleet.router.decisions[:] = decisions
    fleet.lifetimes = [[[0.0, end]] for _ in fleet.replicas]
    fleet._closed = True
    fused.last_outcome[0] = "fused fleet"
    return end
