"""The fused engine for vLLM V1 (simkv.sched.chunked.ChunkedPrefillScheduler: token-budget
scheduling with chunked prefill, also Sarathi-Serve's) on the prefix-caching block pool (or the plain
paged pool with prefix caching off), timed by the calibrated cost model, for one replica under
open-loop arrivals, multi-turn conversations included: `run_fused(sim)` runs it in
simkv.fused.vllm_v1_kernel's compiled loop, with the request table and recorder left exactly as
simkv.engine.Replica would leave them (tests/test_fused_vllm_v1.py), or returns None, changing
nothing, where the default engine must run it (`why_not`; simkv.fused.driver).

The loop keeps its own block pool in the arrays of simkv.kv.pool_kernels (the compiled prefix
cache's layout, started empty as the scheduler's pool is), so the run's allocator object is not
touched; nothing reads it after a run.
"""

from __future__ import annotations

import numpy as np

from simkv import compiled
from simkv.cost.operators import AttentionModel
from simkv.fused.driver import CHUNK_ITERATIONS, COLUMNS, ProgressFn, start, why_not_any
from simkv.kv.paged import PagedAllocator
from simkv.kv.prefix_cache import PrefixCacheBase
from simkv.metrics.compiled_recorder import CompiledRecorder
from simkv.request import REJECTED
from simkv.sched.chunked import ChunkedPrefillScheduler
from simkv.sched.implicit_batch import ImplicitBatch

KERNEL = "simkv.fused.vllm_v1_kernel"
PREFIX_COLUMNS = ("prefix_hit_tokens", "prefix_query_tokens", "prefix_hit_blocks", "prefix_query_blocks")
# the request table's columns the loop fills in (a follow-up turn's arrival is when it is sent)
COLUMNS_WRITTEN = COLUMNS + ("num_preemptions",) + PREFIX_COLUMNS + ("arrival_s",)
MAX_POOL_BLOCKS = 1 << 24      # the loop's name table holds twice the pool's blocks (16 bytes a slot)
MAX_TABLE_ENTRIES = 1 << 26    # block-table entries of the running requests (8 bytes each)


def why_not(sim) -> str | None:
    """Why this fused engine cannot run `sim` (a simkv.build.Simulation), or None if it can."""
    s = getattr(sim, "scheduler", None)
    if type(s) is not ChunkedPrefillScheduler:
        return "not one replica under vLLM V1's chunked scheduling"
    if type(s.batch) is not ImplicitBatch or s.batch.defer_free:
        return "the reference batch was asked for"
    kv, t = s.kv, sim.table
    if s.prefix_caching:
        if not isinstance(kv, PrefixCacheBase) or kv.offloads or kv.reserve_upfront:
            return "not the prefix-caching block pool"
        if t.trace_blocks is not None:
            return "a trace's block ids"
    elif type(kv) is not PagedAllocator or kv.reserve_upfront:
        return "not the paged allocator taking blocks on demand"
    if kv.num_blocks > MAX_POOL_BLOCKS:
        return "a pool of more blocks than the loop's name table holds"
    att = getattr(getattr(getattr(sim.cost, "lc", None), "ops", None), "attention", None)
    if type(att) is not AttentionModel or not att.chunk:
        return "no fitted chunked-prefill attention"
    if t.clients is not None or t.beam_reselect:
        return "closed-loop clients or beam search"
    why = why_not_any(sim, sessions=True)
    if why is not None:
        return why
    if t.next_turn is not None:
        follow = t.next_turn[t.next_turn >= 0]
        if len(follow) and not np.all(t.think_s[follow] > 0):
            return "a follow-up turn sent at once (no think time)"
    return None


def sizes(s) -> tuple[int, int]:
    """(the largest batch, the largest step in tokens) the loop meets under scheduler `s`."""
    return getattr(s, "max_num_seqs", 0), getattr(s, "max_num_batched_tokens", 0)


def loop_cfg(k, sim, max_points: int) -> np.ndarray:
    """The loop's cfg_i (kernel module `k`): the policy's limits and the pool's sizes."""
    s, c, kv = sim.scheduler, sim.cost, sim.scheduler.kv
    cfg_i = np.zeros(k.CFG_I_LEN, np.int64)
    cfg_i[[k.C_MAX_SEQS, k.C_MAX_BATCHED, k.C_WATERMARK, k.C_MAX_REPEAT, k.C_BLOCK, k.C_LAYERS, k.C_MAX_POINTS,
           k.C_CAPACITY, k.C_CHUNK, k.C_CACHING, k.C_FULL_PROMPT]] = (
        s.max_num_seqs, s.max_num_batched_tokens, s.watermark_blocks, s.max_repeat, kv.block_size, c.layers, max_points,
        kv.capacity_tokens, CHUNK_ITERATIONS, int(s.prefix_caching), int(s.full_prompt_must_fit))
    return cfg_i


def attention_cfg(k, cost) -> np.ndarray:
    """att_f: the numbers AttentionModel.prefill_time prices a chunk after cached context with (the
    fitted chunk time of the measured head count nearest the model's, its heads and head size)."""
    att, d = cost.lc.ops.attention, cost.lc.d
    h = min(att.chunk, key=lambda v: abs(np.log(v / d.heads)))   # as AttentionModel._chunk_time picks it
    a, b, c = att.chunk[h]
    out = np.zeros(k.ATT_F_LEN)
    out[[k.A_A, k.A_B, k.A_C, k.A_HEADS, k.A_H, k.A_HEAD_DIM]] = a, b, c, d.heads, h, d.head_dim
    return out


def _pool(k, num_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """An empty prefix-cache pool in simkv.kv.pool_kernels' layout (CompiledPrefixCache.__init__):
    the free queue 0, 1, ..., n-1, no block named, a name table of twice the pool's blocks (it never
    needs to grow: a block holds one name at most)."""
    from simkv.kv import pool_kernels as pk
    n = num_blocks
    st = np.zeros((4, n + 1), np.int64)
    st[pk.NXT] = np.arange(1, n + 2)
    st[pk.NXT, n] = 0
    st[pk.PRV] = np.arange(-1, n)
    st[pk.PRV, 0] = n
    st[pk.NAME] = -1
    slots = 1024
    while slots < 2 * n:
        slots *= 2
    return st, np.full(2 * slots, -1, np.int64)


def _requests(t, b: int) -> tuple[np.ndarray, ...] | None:
    """The first turns (rows that arrive on their own: Replica._initial), where arrivals cut runs
    and when the engine sees them, then the table's columns the loop reads; None if the first
    turns' arrivals are not finite and sorted."""
    i64, n = np.int64, t.num_requests
    arrival = t.arrival_s
    init_rows = np.flatnonzero(~np.isnan(arrival)) if t.next_turn is not None else np.arange(n)
    cut = np.ascontiguousarray(arrival[init_rows], float)
    if not len(cut) or not np.all(np.isfinite(cut)) or np.any(cut[1:] < cut[:-1]):
        return None
    fired = np.empty_like(cut)
    compiled.kernels("simkv.fused.loop_parts").fire_times(cut, fired)
    none = np.full(n, -1, i64)
    session = np.ascontiguousarray(t.session, i64) if t.session is not None else none
    next_turn = np.ascontiguousarray(t.next_turn, i64) if t.next_turn is not None else none
    think = np.ascontiguousarray(t.think_s, float) if t.think_s is not None else np.zeros(n)
    return (init_rows.astype(i64), cut, fired, np.ascontiguousarray(t.prompt_tokens, i64),
            np.ascontiguousarray(t.output_tokens, i64), np.ascontiguousarray(t.final_kv_tokens, i64), session,
            np.ascontiguousarray(t.prefix_id, i64), np.ascontiguousarray(t.prefix_tokens // b, i64),
            np.ascontiguousarray(t.group, i64), next_turn, think)


def run_fused(sim, progress: ProgressFn | None = None) -> tuple[CompiledRecorder, float] | None:
    """Run `sim` in the fused loop: (its recorder, the clock at its end), the request table filled
    in; None (nothing changed) where the default engine must run it (the module docstring)."""
    s = getattr(sim, "scheduler", None)
    max_seqs, max_tokens = sizes(s)
    kv, t = s.kv, sim.table
    b, nb = kv.block_size, kv.num_blocks
    live = t.status != REJECTED
    width = int(-(-int(t.final_kv_tokens[live].max(initial=0)) // b)) + 1   # a request's most blocks
    if (max_seqs + 1) * width > MAX_TABLE_ENTRIES:
        return None
    run = start(sim, why_not, KERNEL, max_seqs, max_tokens, COLUMNS_WRITTEN)
    if run is None:
        return None
    req = _requests(t, b)
    if req is None:
        return None
    k, i64 = run.k, np.int64
    init_rows, cut, fired, prompt, output, final, session, prefix_id, prefix_blocks, group, next_turn, think = req
    out = dict(run.out)
    arrival = out.pop("arrival_s")
    seqs = max_seqs + 1
    pool_st, pool_tab = _pool(k, nb) if s.prefix_caching else (np.zeros((4, 1), i64), np.full(2, -1, i64))
    slots = np.arange(seqs, dtype=i64)
    run.st_i[k.S_NSLOTS] = seqs
    n = t.num_requests
    st_i, st_f, dec_i, dec_f, waiting = run.state(max_seqs)
    gap_v_etc = run.recorder_and_scratch(max_seqs, s.max_repeat)
    args = (init_rows, cut, fired, arrival, prompt, output, final, session, prefix_id, prefix_blocks, group, next_turn,
            think, *out.values(),
            loop_cfg(k, sim, run.rec.max_points), run.limits_f(s.batch.warmup_s), attention_cfg(k, sim.cost),
            *run.tables.values(),
            st_i, st_f, dec_i, dec_f, waiting, np.zeros((k.PRE_I_ROWS, seqs), i64), np.zeros(n, i64), slots,
            np.zeros((seqs, width), i64), np.zeros(seqs, i64), np.zeros(seqs, i64), pool_st, pool_tab,
            np.zeros(n + 1), np.zeros((2, n + 1), i64), np.zeros(n + 1),
            *gap_v_etc, np.zeros(width + 1, i64), np.zeros(seqs, i64), np.zeros(nb + 1, i64))
    return run.drive(args, progress)
