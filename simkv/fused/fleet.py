"""Fused fleets: a fleet whose replicas never affect one another, each replica in its fused loop.

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

import copy
import dataclasses

import numpy as np

from simkv import compiled, fused
from simkv.build import Simulation
from simkv.fused.dispatch import ENGINES
from simkv.fused.driver import ProgressFn


def why_not(fleet) -> str | None:
    """Why the replicas of `fleet` (a simkv.fleet.run.Fleet) cannot run apart in fused loops."""
    spec, t = fleet.spec, fleet.t
    if fleet._plan is None:
        return "the router decides as requests come (load, sessions, a delay, clients, P/D or autoscaling)"
    if spec.faults:
        return "replica faults"
    if t.num_requests == 0:
        return "no requests"
    a = t.arrival_s
    if not np.all(np.isfinite(a)) or (len(a) > 1 and np.any(a[1:] < a[:-1])):
        return "arrival times not finite and sorted"
    for g in range(len(fleet.replicas)):
        sim = _replica_sim(fleet, g, None)
        if _engine(sim) is None:
            return f"replica {g}: no fused engine fits (" + "; ".join(e.why_not(sim) for e in ENGINES) + ")"
    return None


def run_fused(fleet, progress: ProgressFn | None = None) -> float | None:
    """Run every replica of `fleet` in its fused loop: the fleet's end time, the fleet filled in as
    `Fleet.run` leaves it; None, nothing changed, where the fleet must run on simpy (`why_not`, numba
    missing or not paying for a run this long, or a loop's BAIL: simkv.fused.last_outcome says)."""
    fused.last_outcome[0] = ""
    n = fleet.t.num_requests
    if not fused.allowed() or not compiled.wanted(n) or why_not(fleet) is not None:
        return None
    parts = compiled.kernels("simkv.fused.loop_parts")
    if parts is None:
        return None
    plan = fleet._plan
    fired = np.empty(n)
    parts.fire_times(np.ascontiguousarray(fleet.t.arrival_s, float), fired)   # Fleet._arrivals' clock
    done, runs = 0, []
    for g in range(len(fleet.replicas)):
        rows = np.flatnonzero(plan == g)
        if not len(rows):
            runs.append((g, rows, None, None))
            continue
        sim = _replica_sim(fleet, g, rows)

        def replica_progress(i: int, _: int, now: float, before: int = done) -> None:
            progress(before + i, n, now)
        out = _engine(sim).run_fused(sim, replica_progress if progress is not None else None, fired[rows])
        if out is None:   # handed back: the whole fleet runs on simpy
            return None
        runs.append((g, rows, sim, out))
        done += len(rows)
    # the fleet closes at its last answer, or at its last arrival if that comes later (refused)
    end = max([float(fired[-1])] + [out[1] for *_, out in runs if out is not None])
    for g, rows, sim, out in runs:
        pool, r = fleet.pools[fleet.pool_index[g]], fleet.local_index[g]
        if out is None:   # never sent anything: idle from the start
            rec, now = pool.recorders[r], 0.0
        else:
            rec, now = out
            for key in _engine(sim).COLUMNS_WRITTEN:   # each row is touched by one replica only
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


def _replica_sim(fleet, g: int, rows: np.ndarray | None) -> Simulation:
    """Replica g as a simulation of its own: its pool's, with its scheduler, and (`rows`) a table of
    the requests routed to it (None: the pool's whole table, to check what it holds)."""
    pool = fleet.pools[fleet.pool_index[g]]
    table = pool.sim.table if rows is None else _rows_of(pool.sim.table, rows)
    return dataclasses.replace(pool.sim, table=table, scheduler=pool.schedulers[fleet.local_index[g]])


def _engine(sim: Simulation):
    return next((e for e in ENGINES if e.why_not(sim) is None), None)


def _rows_of(t, rows: np.ndarray):
    """The table of requests `rows` of `t` (copies of the per-request columns)."""
    n = t.num_requests
    out = copy.copy(t)
    for key, col in vars(t).items():
        if isinstance(col, np.ndarray) and col.shape[:1] == (n,):
            setattr(out, key, col[rows])
    out.num_requests = int(len(rows))
    return out

