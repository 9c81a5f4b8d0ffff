"""The fused engine for TGI (simkv.sched.tgi.TgiScheduler with prefill chunking, v3's default) on
blocks reserved at admission, timed by the calibrated cost model, for one replica under open-loop
arrivals: `run_fused(sim)` runs it in simkv.fused.tgi_kernel's compiled loop, with the request table
and recorder left exactly as simkv.engine.Replica would leave them (tests/test_fused_engine.py), or
returns None, changing nothing, where the default engine must run it (`why_not`; simkv.fused.driver).

With prefix caching (the preset's default) the loop runs only where no block can ever be found
cached. Block names are content: a shared prefix, a conversation, a trace's block ids, or the
request's own group, and TGI never preempts. So without the first three and with one sequence a
group, a lookup finds nothing, and the radix allocator is a reserving block pool that counts
queries.
"""

from __future__ import annotations

import numpy as np

from simkv.fused.driver import CHUNK_ITERATIONS, COLUMNS, ProgressFn, start, why_not_any
from simkv.metrics.compiled_recorder import CompiledRecorder
from simkv.sched.implicit_batch import ImplicitBatch
from simkv.sched.tgi import TgiScheduler


COLUMNS_WRITTEN = COLUMNS + ("prefix_query_tokens", "prefix_query_blocks")   # the request table's columns the loop fills in

def why_not(sim) -> str | None:
    """Why this fused engine cannot run `sim` (a simkv.build.Simulation), or None if it can."""
    s = getattr(sim, "scheduler", None)
    if type(s) is not TgiScheduler or not s.chunking:
        return "not one replica under TGI's chunked batching"
    if type(s.batch) is not ImplicitBatch or s.batch.defer_free:
        return "the reference batch was asked for"
    kv, t = s.kv, sim.table
    if not (kv.paged and kv.reserve_upfront) or kv.offloads or kv.prefix_caching != s.prefix_caching:
        return "not a reserving block pool"
    if s.prefix_caching:
        b = kv.block_size
        if (t.session is not None or t.trace_blocks is not None or np.any(t.prefix_tokens >= b)
                or len(np.unique(t.group)) != t.num_requests):
            return "prefix-cache hits are possible (shared content)"
    return why_not_any(sim)


KERNEL = "simkv.fused.tgi_kernel"


def sizes(s) -> tuple[int, int]:
    """(the largest batch, the largest step in tokens) the loop meets under scheduler `s`: a batch of
    at most max_concurrent_requests (arrivals beyond it are refused), so no decode curves past it."""
    batch = min(getattr(s, "max_num_seqs", 0), getattr(s, "max_concurrent_requests", 0))
    return batch, getattr(s, "max_batch_prefill_tokens", 0) + batch


def loop_cfg(k, sim, max_points: int) -> np.ndarray:
    """The loop's cfg_i (kernel module `k`): the policy's limits and the pool's sizes."""
    s, c, kv = sim.scheduler, sim.cost, sim.scheduler.kv
    cfg_i = np.zeros(k.CFG_I_LEN, np.int64)
    cfg_i[[k.C_MAX_SEQS, k.C_PREFILL_BUDGET, k.C_MAX_REPEAT, k.C_BLOCK, k.C_LAYERS, k.C_MAX_POINTS, k.C_CAPACITY,
           k.C_CHUNK, k.C_MAX_IN_SYSTEM, k.C_PREFIX_CACHING]] = (
        s.max_num_seqs, s.max_batch_prefill_tokens, s.max_repeat, kv.block_size, c.layers, max_points,
        kv.capacity_tokens, CHUNK_ITERATIONS, s.max_concurrent_requests, int(s.prefix_caching))
    return cfg_i


def price_prefill(k, cost, pre_i: np.ndarray, st_i: np.ndarray, st_f: np.ndarray) -> None:
    """Answer the loop's CALL: the step's prefill chunks, priced by the cost model itself."""
    n = int(st_i[k.S_NPRE])
    new = pre_i[k.P_NEW, :n].copy()
    st_f[k.SF_PRE] = cost.prefill_attention_s(new, pre_i[k.P_COMPUTED, :n] + new)


def run_fused(sim, progress: ProgressFn | None = None,
              routed: np.ndarray | None = None) -> tuple[CompiledRecorder, float] | None:
    """Run `sim` in the fused loop: (its recorder, the clock at its end), the request table filled
    in; None (nothing changed) where the default engine must run it (the module docstring).
    `routed`: a fleet's replica, handed its requests at these times (simkv.fused.fleet)."""
    s = getattr(sim, "scheduler", None)
    batch, max_tokens = sizes(s)
    run = start(sim, why_not, KERNEL, batch, max_tokens, COLUMNS_WRITTEN, routed)
    if run is None:
        return None
    k, t = run.k, sim.table
    pre_i = np.zeros((k.PRE_I_ROWS, batch + 1), np.int64)
    args = (*run.requests(), np.ascontiguousarray(t.max_new_tokens, np.int64), *run.out.values(),
            loop_cfg(k, sim, run.rec.max_points), run.limits_f(s.batch.warmup_s), *run.tables.values(),
            *run.state(batch), pre_i, *run.recorder_and_scratch(batch, s.max_repeat), *run.NO_ROUTER)
    return run.drive(args, progress, lambda: price_prefill(k, sim.cost, pre_i, run.st_i, run.st_f))
