"""The fused engine for the commonest run: one replica, open-loop arrivals, FCFS continuous batching
(simkv.sched.continuous) on paged blocks allocated on demand, timed by the calibrated cost model.

`run_fused(sim)` runs such a simulation in the compiled loop of simkv.fused.paged_fcfs_kernel and
leaves the request table and a recorder exactly as simkv.engine.Replica would leave them
(tests/test_fused_engine.py compares summaries, request tables and time series). It returns None
without changing anything when the run is not of that kind (`why_not` says why), when numba is
missing, or when the loop meets what it does not model (the kernel's BAIL reasons): the caller then
runs the reference engine. The recorder it returns is the compiled one
(simkv.metrics.compiled_recorder), whose totals equal the pure recorder's.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import numpy as np

from simkv import compiled, fused
from simkv.build import Simulation
from simkv.cost.calibrated import CalibratedCost
from simkv.engine import MAX_STEP_S
from simkv.kv.paged import PagedAllocator
from simkv.metrics import _gap_bins
from simkv.metrics.compiled_recorder import CompiledRecorder, new_recorder
from simkv.request import REJECTED
from simkv.sched.continuous import ContinuousBatchingScheduler
from simkv.sched.implicit_batch import ImplicitBatch

ProgressFn = Callable[[int, int, float], None]
CHUNK_ITERATIONS = 20_000   # iterations between progress reports (~0.1 s)
GAP_BUFFER = 1 << 15        # token gaps the loop hands back for numpy to bin, per pause at most
BAIL_REASONS = {1: "an arrival at exactly a step's end", 2: "a step time the engine rejects",
                3: "a request that can never be admitted", 4: "a size outside the cost model's tables",
                5: "decoders whose last tokens differ"}
# what the last run_fused did: "fused", "bailed: <reason>" (the reference ran it), or "" (not tried)
last_outcome = [""]


def kernel_module() -> ModuleType | None:
    """simkv.fused.paged_fcfs_kernel, or None where numba is missing or `SIMKV_COMPILED=0`."""
    return compiled.kernels("simkv.fused.paged_fcfs_kernel")


def why_not(sim) -> str | None:
    """Why the fused engine cannot run `sim` (a simkv.build.Simulation), or None if it can."""
    if not isinstance(sim, Simulation):
        return "a fleet"
    s, c, t = sim.scheduler, sim.cost, sim.table
    if type(s) is not ContinuousBatchingScheduler:
        return "not one replica under the fcfs policy"
    if type(s.batch) is not ImplicitBatch or s.batch.defer_free:
        return "the reference batch was asked for"
    kv = s.kv
    if type(kv) is not PagedAllocator or kv.reserve_upfront:
        return "not the paged allocator taking blocks on demand"
    if len(s.batch) or s.waiting or kv.num_free_blocks != kv.num_blocks:
        return "the scheduler has run already"
    if type(c) is not CalibratedCost or {"seconds", "decode_run_seconds"} & set(vars(c)):
        return "not the calibrated cost model"
    if max(s.max_num_batched_tokens, s.max_num_seqs) >= len(c._fixed):
        return "step sizes beyond the cost model's precomputed table"
    if t.next_turn is not None or t.clients is not None or t.beam_reselect:
        return "sessions, closed-loop clients or beam search"
    if not np.isfinite(sim.measure_end_s) or t.num_requests == 0:
        return "no finite measured window"
    a = t.arrival_s
    if not np.all(np.isfinite(a)) or (len(a) > 1 and np.any(a[1:] < a[:-1])):
        return "arrival times not finite and sorted"
    return None


def _cost_tables(c: CalibratedCost, max_seqs: int, max_batched: int) -> dict[str, np.ndarray]:
    """The cost model's numbers the loop reads, taken from the model's own tables and methods (so
    the same floats): per-size tables and one decode-attention curve per batch size."""
    from simkv.cost.attention_kernels import _slopes
    top = max(max_batched, max_seqs)
    curves = [c._decode_curve(b) for b in range(1, max_seqs + 1)]
    width = max(len(k) for k, _ in curves)
    knots = np.full((max_seqs + 1, width), np.inf)
    share = np.zeros((max_seqs + 1, width))
    slopes = np.zeros((max_seqs + 1, max(width - 1, 1)))
    for b, (k, v) in enumerate(curves, start=1):
        if len(k) != width:
            raise ValueError("decode curves of different lengths")
        knots[b], share[b] = k, v
        slopes[b, :width - 1] = _slopes(np.ascontiguousarray(k, float), np.ascontiguousarray(v, float))
    return {"fixed": c._fixed, "prefill": c._prefill,
            "lm": np.array([c.lm_head_s(i) for i in range(max_seqs + 1)]),
            "whole": np.array([c.whole_model_s(m) for m in range(top + 1)]),
            "knots": knots, "share": share, "slopes": slopes}


def run_fused(sim, progress: ProgressFn | None = None) -> tuple[CompiledRecorder, float] | None:
    """Run `sim` in the fused loop: (its recorder, the clock at its end), the request table filled
    in; None (nothing changed) where the default engine must run it (the module docstring), where
    fused engines are off (`simkv.fused.disabled`) or where compiled kernels are not wanted for a
    run this long (simkv.compiled: they pay from COMPILED_FROM_REQUESTS requests)."""
    last_outcome[0] = ""
    if not fused.allowed() or why_not(sim) is not None or not compiled.wanted(sim.table.num_requests):
        return None
    k = kernel_module()
    if k is None:
        return None
    s, c, t = sim.scheduler, sim.cost, sim.table
    kv, run = s.kv, sim.scenario.run
    try:
        tables = _cost_tables(c, s.max_num_seqs, s.max_num_batched_tokens)
    except ValueError:
        last_outcome[0] = "bailed: decode curves of different lengths"
        return None
    rec = new_recorder(sim.memory.capacity_tokens, sim.measure_start_s, sim.measure_end_s, run.time_series_points, True)
    if not isinstance(rec, CompiledRecorder) or rec.capacity != kv.capacity_tokens:
        return None
    n, max_seqs, steps = t.num_requests, s.max_num_seqs, s.max_repeat + 1
    i64 = np.int64
    cfg_i = np.zeros(k.CFG_I_LEN, i64)
    cfg_i[[k.C_MAX_SEQS, k.C_MAX_BATCHED, k.C_WATERMARK, k.C_MAX_REPEAT, k.C_BLOCK, k.C_LAYERS, k.C_MAX_POINTS,
           k.C_CAPACITY, k.C_CHUNK]] = (max_seqs, s.max_num_batched_tokens, s.watermark_blocks, s.max_repeat,
                                        kv.block_size, c.layers, rec.max_points, kv.capacity_tokens, CHUNK_ITERATIONS)
    cfg_f = np.zeros(k.CFG_F_LEN)
    cfg_f[[k.CF_C_ATT, k.CF_SCALE, k.CF_HOST, k.CF_HOST_PER_SEQ, k.CF_WARMUP, k.CF_MAX_STEP]] = (
        c.c_att, c.decode_attention_scale, c.host_overhead_s, c.host_per_seq_s, s.batch.warmup_s, MAX_STEP_S)
    st_i, st_f = np.zeros(k.ST_I_LEN, i64), np.zeros(k.ST_F_LEN)
    st_i[k.S_FREE], st_i[k.S_SAMPLE] = kv.num_blocks, rec._next_sample
    st_f[k.SF_DT] = rec.dt
    out = {name: getattr(t, name).copy() for name in ("status", "generated", "first_scheduled_s", "first_token_s",
                                                     "finish_s", "last_token_s", "num_preemptions", "tbt_max_s")}
    rows_i, rows_f = np.zeros((rec.max_points + 2, 8), i64), np.zeros((rec.max_points + 2, 2))
    room = max(GAP_BUFFER, 4 * (max_seqs + steps + 1))   # the loop pauses to have them binned before they fill
    gap_v, gap_m = np.zeros(room), np.zeros(room, i64)
    args = (np.ascontiguousarray(t.arrival_s, float), np.ascontiguousarray(t.prompt_tokens, i64),
            np.ascontiguousarray(t.output_tokens, i64), np.ascontiguousarray(t.final_kv_tokens, i64),
            t.status == REJECTED, *out.values(), cfg_i, cfg_f, *tables.values(),
            st_i, st_f, np.zeros((k.DEC_I_ROWS, max_seqs + 1), i64), np.zeros((k.DEC_F_ROWS, max_seqs + 1)),
            np.zeros(n + 1, i64), rec._f, rec._i, rec._gap_hist, rows_i, rows_f, gap_v, gap_m,
            np.zeros(steps), np.zeros(steps), np.zeros((5, steps), i64), np.zeros(steps, i64), np.zeros(max_seqs + 1))
    while True:
        code = k.run(*args)
        g = int(st_i[k.S_NGAPS])
        if g:   # gaps numpy bins (a recompute's gap; a step time near a bin edge), as the pure recorder does
            np.add.at(rec._gap_hist, _gap_bins(gap_v[:g]), gap_m[:g])
            st_i[k.S_NGAPS] = 0
        if code == k.BAIL:
            last_outcome[0] = "bailed: " + BAIL_REASONS.get(int(st_i[k.S_BAIL]), "unknown")
            return None
        if code == k.DONE:
            break
        if progress is not None:
            progress(int(st_i[k.S_NEXT]), n, float(st_f[k.SF_NOW]))
    for name, values in out.items():
        getattr(t, name)[:] = values
    rec._rows = [(int(ri[0]), float(rf[0]), *map(int, ri[1:6]), float(rf[1]), int(ri[6]), int(ri[7]))
                 for ri, rf in zip(rows_i[:st_i[k.S_NROWS]].tolist(), rows_f[:st_i[k.S_NROWS]].tolist())]
    rec._next_sample, rec.dt = int(st_i[k.S_SAMPLE]), float(st_f[k.SF_DT])
    last_outcome[0] = "fused"
    return rec, float(st_f[k.SF_NOW])
