"""The fused engine for the commonest run: one replica, open-loop arrivals, FCFS continuous batching
(simkv.sched.continuous) on paged blocks allocated on demand, timed by the calibrated cost model.

`run_fused(sim)` runs such a simulation in the compiled loop of simkv.fused.paged_fcfs_kernel and
leaves the request table and a recorder exactly as simkv.engine.Replica would leave them
(tests/test_fused_engine.py compares summaries, request tables and time series). It returns None
without changing anything when the run is not of that kind (`why_not` says why), when numba is
missing or not wanted for a run this short (simkv.fused.driver.wanted), or when the loop meets what
it does not model (the loop's BAIL): the caller then runs the default engine. The recorder it
returns is the compiled one (simkv.metrics.compiled_recorder), whose totals equal the pure
recorder's.
"""

from __future__ import annotations

import numpy as np

from simkv.fused.driver import CHUNK_ITERATIONS, COLUMNS, ProgressFn, start, why_not_any
from simkv.kv.paged import PagedAllocator
from simkv.metrics.compiled_recorder import CompiledRecorder
from simkv.sched.continuous import ContinuousBatchingScheduler
from simkv.sched.implicit_batch import ImplicitBatch


COLUMNS_WRITTEN = COLUMNS + ("num_preemptions",)   # the request table's columns the loop fills in

def why_not(sim) -> str | None:
    """Why this fused engine cannot run `sim` (a simkv.build.Simulation), or None if it can."""
    s = getattr(sim, "scheduler", None)
    if type(s) is not ContinuousBatchingScheduler:
        return "not one replica under the fcfs policy"
    if type(s.batch) is not ImplicitBatch or s.batch.defer_free:
        return "the reference batch was asked for"
    if type(s.kv) is not PagedAllocator or s.kv.reserve_upfront:
        return "not the paged allocator taking blocks on demand"
    return why_not_any(sim)


KERNEL = "simkv.fused.paged_fcfs_kernel"


def sizes(s) -> tuple[int, int]:
    """(the largest batch, the largest step in tokens) the loop meets under scheduler `s`."""
    return getattr(s, "max_num_seqs", 0), getattr(s, "max_num_batched_tokens", 0)


def loop_cfg(k, sim, max_points: int) -> np.ndarray:
    """The loop's cfg_i (kernel module `k`): the policy's limits and the pool's sizes."""
    s, c, kv = sim.scheduler, sim.cost, sim.scheduler.kv
    cfg_i = np.zeros(k.CFG_I_LEN, np.int64)
    cfg_i[[k.C_MAX_SEQS, k.C_MAX_BATCHED, k.C_WATERMARK, k.C_MAX_REPEAT, k.C_BLOCK, k.C_LAYERS, k.C_MAX_POINTS,
           k.C_CAPACITY, k.C_CHUNK]] = (s.max_num_seqs, s.max_num_batched_tokens, s.watermark_blocks, s.max_repeat,
                                        kv.block_size, c.layers, max_points, kv.capacity_tokens, CHUNK_ITERATIONS)
    return cfg_i


def run_fused(sim, progress: ProgressFn | None = None,
              routed: np.ndarray | None = None) -> tuple[CompiledRecorder, float] | None:
    """Run `sim` in the fused loop: (its recorder, the clock at its end), the request table filled
    in; None (nothing changed) where the default engine must run it (the module docstring).
    `routed`: a fleet's replica, handed its requests at these times (simkv.fused.fleet)."""
    s = getattr(sim, "scheduler", None)
    run = start(sim, why_not, KERNEL, *sizes(s), COLUMNS_WRITTEN, routed)
    if run is None:
        return None
    k = run.k
    args = (*run.requests(), *run.out.values(), loop_cfg(k, sim, run.rec.max_points), run.limits_f(s.batch.warmup_s),
            *run.tables.values(), *run.state(s.max_num_seqs), *run.recorder_and_scratch(s.max_num_seqs, s.max_repeat),
            np.zeros((k.PLAN_I_ROWS, s.max_num_seqs), np.int64), *run.NO_ROUTER)
    return run.drive(args, progress)
