"""The fused engine for vLLM V1 (simkv.sched.chunked.ChunkedPrefillScheduler: token-budget
scheduling with chunked prefill, also Sarathi-Serve's) on the prefix-caching block pool (or the plain
paged pool with prefix caching off), timed by the calibrated cost model, for one replica under
open-loop arrivals, multi-turn conversations included, or a fleet's replica (simkv.fused.fleet:
routed, or in a lockstep fleet, simkv.fused.fleet_loop.run_v1): `run_fused(sim)` runs it in
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
MAX_TABLE_ENTRIES = 1 << 25    # block-table entries of the running requests (8 bytes each; a fleet's together)


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
    if t.clients is not None or t.beam_reselect:
        return "closed-loop clients or beam search"
    why = why_not_any(sim, sessions=True)
    if why is not None:
        return why
    att = getattr(getattr(getattr(sim.cost, "lc", None), "ops", None), "attention", None)
    if type(att) is not AttentionModel or not att.chunk:
        return "no fitted chunked-prefill attention"
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


def table_sizes(sim) -> tuple[int, int] | None:
    """(blocks a request's table may hold, table slots) for the loop: the longest live request's
    blocks and one more; a slot per running request (at most max_num_seqs, and at most one per
    block, since each holds a block of its own). None where the tables would be too large."""
    s, t = sim.scheduler, sim.table
    b = s.kv.block_size
    live = t.status != REJECTED
    width = int(-(-int(t.final_kv_tokens[live].max(initial=0)) // b)) + 1
    slots = min(s.max_num_seqs, s.kv.num_blocks) + 1
    return (width, slots) if slots * width <= MAX_TABLE_ENTRIES else None


def replica_state(k, sim, width: int, slots: int, follow_ups: int, lead: tuple[int, ...] = ()) -> tuple:
    """A replica's arrays the loop keeps beyond the shared ones (`lead` leading dimensions: a
    lockstep fleet's replicas): the prefilling requests, the free table slots, the block tables,
    their lengths and named blocks, the pool (simkv.kv.pool_kernels) and the follow-up heaps
    (room for `follow_ups`); then its scratch: block names, victims, new blocks."""
    s, i64 = sim.scheduler, np.int64
    nb = s.kv.num_blocks
    st, tab = _pool(k, nb) if s.prefix_caching else (np.zeros((4, 1), i64), np.full(2, -1, i64))

    def each(a: np.ndarray) -> np.ndarray:
        return np.array(np.broadcast_to(a, (*lead, *a.shape)))   # (a writable copy for each)
    return (np.zeros((*lead, k.PRE_I_ROWS, s.max_num_seqs + 1), i64), each(np.arange(slots, dtype=i64)),
            np.zeros((*lead, slots, width), i64), np.zeros((*lead, slots), i64), np.zeros((*lead, slots), i64),
            each(st), each(tab), np.zeros((*lead, follow_ups + 1)), np.zeros((*lead, 2, follow_ups + 1), i64),
            np.zeros((*lead, follow_ups + 1)),
            np.zeros((*lead, width + 1), i64), np.zeros((*lead, s.max_num_seqs + 1), i64), np.zeros((*lead, nb + 1), i64))


def run_fused(sim, progress: ProgressFn | None = None,
              routed: np.ndarray | None = None) -> tuple[CompiledRecorder, float] | None:
    """Run `sim` in the fused loop: (its recorder, the clock at its end), the request table filled
    in; None (nothing changed) where the default engine must run it (the module docstring).
    `routed`: a fleet's replica, handed its requests at these times (simkv.fused.fleet)."""
    s = getattr(sim, "scheduler", None)
    max_seqs, max_tokens = sizes(s)
    t = sim.table
    if why_not(sim) is not None:
        return None
    shape = table_sizes(sim)
    if shape is None:
        return None
    run = start(sim, why_not, KERNEL, max_seqs, max_tokens, COLUMNS_WRITTEN, routed)
    if run is None:
        return None
    req = _requests(t, s.kv.block_size)
    if req is None:
        return None
    k, i64, n = run.k, np.int64, t.num_requests
    if routed is not None:   # no arrival process: the fleet hands every request over at its time
        req = (np.arange(n, dtype=i64), routed, routed, *req[3:])
    out = dict(run.out)
    arrival = out.pop("arrival_s")
    width, slots = shape
    run.st_i[k.S_NSLOTS] = slots
    pre_etc = replica_state(k, sim, width, slots, n)
    args = (*req[:3], arrival, *req[3:], *out.values(),
            loop_cfg(k, sim, run.rec.max_points), run.limits_f(s.batch.warmup_s), attention_cfg(k, sim.cost),
            *run.tables.values(), *run.state(max_seqs), pre_etc[0], np.zeros(n, i64), *pre_etc[1:10],
            *run.recorder_and_scratch(max_seqs, s.max_repeat), *pre_etc[10:], *run.NO_ROUTER)
    return run.drive(args, _counting_follow_ups(progress, k, run.st_i))


def _counting_follow_ups(progress: ProgressFn | None, k, st_i: np.ndarray) -> ProgressFn | None:
    """`progress` told the requests sent: the first turns the loop reports and the follow-ups sent
    so far (created less those pending), as the default engine counts them."""
    if progress is None:
        return None
    report = progress

    def counting(first: int, total: int, now: float) -> None:
        report(first + int(st_i[k.S_FSEQ] - st_i[k.S_FH]), total, now)
    return counting
