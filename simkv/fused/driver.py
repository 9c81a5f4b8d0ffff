"""What every fused engine's Python side shares (simkv.fused): the checks every run must pass, the
cost model's tables as the loops read them, and `FusedRun`, which packs a run's state into arrays,
drives a compiled loop to its end and unpacks the request table and the recorder, or leaves both
untouched when the loop hands the run back (BAIL)."""

from __future__ import annotations

import weakref
from types import ModuleType
from typing import Callable

import numpy as np

from simkv import compiled, fused
from simkv.build import Simulation
from simkv.cost.calibrated import CalibratedCost
from simkv.engine import MAX_STEP_S
from simkv.fused import layout as lp
from simkv.metrics import _gap_bins
from simkv.metrics.compiled_recorder import CompiledRecorder, new_recorder

ProgressFn = Callable[[int, int, float], None]
CHUNK_ITERATIONS = 20_000   # iterations between progress reports (~0.1 s)
GAP_BUFFER = 1 << 15        # token gaps a loop hands back for numpy to bin, per pause at most
BAIL_REASONS = {1: "an arrival at exactly a step's end", 2: "a step time the engine rejects",
                3: "a request that can never be admitted", 4: "a size outside the cost model's tables",
                5: "decoders whose last tokens differ", 6: "a replica's queue longer than its ring (lockstep fleet)",
                7: "a follow-up turn and a first turn at one instant"}
# the request table's columns the loops write (each works on copies, written back when it is done)
COLUMNS = ("status", "reject_reason", "generated", "first_scheduled_s", "first_token_s", "finish_s", "last_token_s",
           "tbt_max_s")


def why_not_any(sim, sessions: bool = False) -> str | None:
    """Why no fused engine can run `sim`, whatever its policy (None: the policy decides).
    `sessions`: the engine runs multi-turn conversations (only the first turns' arrivals are known)."""
    if not isinstance(sim, Simulation):
        return "a fleet"
    s, c, t, kv = sim.scheduler, sim.cost, sim.table, sim.scheduler.kv
    if len(s.batch) or s.waiting or kv.num_free_blocks != kv.num_blocks:
        return "the scheduler has run already"
    if {"schedule", "commit", "add_request"} & set(vars(s)):
        return "the scheduler's methods are replaced (a spy or a wrapper)"
    if type(c) is not CalibratedCost or {"seconds", "decode_run_seconds"} & set(vars(c)):
        return "not the calibrated cost model"
    if (t.next_turn is not None and not sessions) or t.clients is not None or t.beam_reselect:
        return "sessions, closed-loop clients or beam search"
    if not np.isfinite(sim.measure_end_s) or t.num_requests == 0:
        return "no finite measured window"
    a = t.arrival_s
    if t.next_turn is not None:   # a later turn's arrival is when it is sent
        a = a[~np.isnan(a)]
    if not np.all(np.isfinite(a)) or (len(a) > 1 and np.any(a[1:] < a[:-1])):
        return "arrival times not finite and sorted"
    return None


def wanted(sim) -> bool:
    """Fused engines are on and compiled kernels pay for a run this long (simkv.compiled)."""
    return fused.allowed() and compiled.wanted(sim.table.num_requests)


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # cost model -> {(seqs, tokens): tables}


def cost_tables(c: CalibratedCost, max_seqs: int, max_tokens: int) -> dict[str, np.ndarray] | None:
    """The cost model's numbers a loop reads, taken from the model's own tables and methods (so the
    same floats): per-size tables up to `max_tokens` tokens (at most as far as the model's own
    tables go: a loop hands back a step beyond them, BAIL_TABLE) and one decode-attention curve
    per batch size up to `max_seqs`. None where the curves differ in length. Made once per cost
    model and sizes (a fleet's replicas share their pool's; the loops only read them)."""
    memo = _TABLES.setdefault(c, {})
    if (max_seqs, max_tokens) not in memo:
        memo[max_seqs, max_tokens] = _cost_tables(c, max_seqs, max_tokens)
    return memo[max_seqs, max_tokens]


def _cost_tables(c: CalibratedCost, max_seqs: int, max_tokens: int) -> dict[str, np.ndarray] | None:
    from simkv.cost.attention_kernels import _slopes
    top = min(max(max_tokens, max_seqs), len(c._fixed) - 1)
    curves = [c._decode_curve(b) for b in range(1, max_seqs + 1)]
    width = len(curves[0][0])
    if any(len(k) != width for k, _ in curves):
        return None
    knots = np.full((max_seqs + 1, width), np.inf)
    share = np.zeros((max_seqs + 1, width))
    slopes = np.zeros((max_seqs + 1, max(width - 1, 1)))
    for b, (k, v) in enumerate(curves, start=1):
        knots[b], share[b] = k, v
        slopes[b, :width - 1] = _slopes(np.ascontiguousarray(k, float), np.ascontiguousarray(v, float))
    return {"fixed": c._fixed, "prefill": c._prefill,
            "lm": np.array([c.lm_head_s(i) for i in range(max_seqs + 1)]),
            "whole": np.array([c.whole_model_s(m) for m in range(top + 1)]),
            "knots": knots, "share": share, "slopes": slopes}


def gap_buffers(max_seqs: int, max_repeat: int, lead: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """A loop's token-gap buffer (values, multiplicities), `lead` leading dimensions (a lockstep
    fleet's replicas) in front: room for what a few iterations leave, as the loop pauses to have
    them binned before they fill."""
    room = max(GAP_BUFFER, 4 * (max_seqs + max_repeat + 2))
    return np.zeros((*lead, room)), np.zeros((*lead, room), np.int64)


def scratch(max_seqs: int, max_repeat: int, lead: tuple[int, ...] = ()) -> tuple[np.ndarray, ...]:
    """A loop's scratch arrays, `lead` dimensions in front: step times, ends, KV breakdown and queue
    depths of up to max_repeat + 1 steps, per-sequence values."""
    steps = max_repeat + 1
    return (np.zeros((*lead, steps)), np.zeros((*lead, steps)), np.zeros((*lead, 5, steps), np.int64),
            np.zeros((*lead, steps), np.int64), np.zeros((*lead, max_seqs + 1)))


def bin_gaps(hist: np.ndarray, gap_v: np.ndarray, gap_m: np.ndarray, st_i: np.ndarray) -> None:
    """The token gaps a loop left (a recompute's gap; a step time near a bin edge) into `hist`,
    binned by numpy as the pure recorder bins them; the buffer emptied."""
    g = int(st_i[lp.S_NGAPS])
    if g:
        np.add.at(hist, _gap_bins(gap_v[:g]), gap_m[:g])
        st_i[lp.S_NGAPS] = 0


def series_into(rec: CompiledRecorder, rows_i: np.ndarray, rows_f: np.ndarray, st_i: np.ndarray,
                st_f: np.ndarray) -> None:
    """The time series a loop sampled (rows, next sample, interval) into recorder `rec`."""
    rows = int(st_i[lp.S_NROWS])
    rec._rows = [(int(ri[0]), float(rf[0]), *map(int, ri[1:6]), float(rf[1]), int(ri[6]), int(ri[7]))
                 for ri, rf in zip(rows_i[:rows].tolist(), rows_f[:rows].tolist())]
    rec._next_sample, rec.dt = int(st_i[lp.S_SAMPLE]), float(st_f[lp.SF_DT])


def limits_f(c: CalibratedCost, warmup_s: float) -> np.ndarray:
    """cfg_f of a loop: the cost model's scalars, the warm-up and the longest plausible step."""
    cfg_f = np.zeros(lp.CFG_F_LEN)
    cfg_f[[lp.CF_C_ATT, lp.CF_SCALE, lp.CF_HOST, lp.CF_HOST_PER_SEQ, lp.CF_WARMUP, lp.CF_MAX_STEP]] = (
        c.c_att, c.decode_attention_scale, c.host_overhead_s, c.host_per_seq_s, warmup_s, MAX_STEP_S)
    return cfg_f


class FusedRun:
    """One run of a compiled loop (`kernel`, a module with `run` and the simkv.fused.loop_parts
    slots): the copies of the table's columns it writes, its state arrays, the recorder's."""

    def __init__(self, sim: Simulation, kernel: ModuleType, columns: tuple[str, ...] = COLUMNS,
                 routed: np.ndarray | None = None) -> None:
        self.sim, self.k, self.routed = sim, kernel, routed
        t, run = sim.table, sim.scenario.run
        self.rec = new_recorder(sim.memory.capacity_tokens, sim.measure_start_s, sim.measure_end_s,
                                run.time_series_points, True)
        self.out = {name: getattr(t, name).copy() for name in columns}
        self.st_i, self.st_f = np.zeros(kernel.ST_I_LEN, np.int64), np.zeros(kernel.ST_F_LEN)
        self.tables: dict[str, np.ndarray] = {}
        self.st_i[lp.S_SAMPLE] = self.rec._next_sample
        self.st_i[lp.S_ROUTED] = int(routed is not None)
        self.st_f[lp.SF_DT] = self.rec.dt
        self._rows_i = np.zeros((self.rec.max_points + 2, 8), np.int64)
        self._rows_f = np.zeros((self.rec.max_points + 2, 2))

    @property
    def usable(self) -> bool:
        """The recorder is the compiled one (numba set it up) and the cache's size agrees."""
        return isinstance(self.rec, CompiledRecorder) and self.rec.capacity == self.sim.scheduler.kv.capacity_tokens

    def requests(self) -> tuple[np.ndarray, ...]:
        """The table's inputs every loop reads: arrival, where arrivals cut runs, when the engine
        sees them (simkv.fused.loop_parts: the arrival process's clock, or a fleet's hand-overs),
        prompt, output and final KV lengths."""
        t, i64 = self.sim.table, np.int64
        arrival = np.ascontiguousarray(t.arrival_s, float)
        if self.routed is not None:
            cut = fired = np.ascontiguousarray(self.routed, float)
        else:
            cut, fired = arrival, np.empty_like(arrival)
            compiled.kernels("simkv.fused.loop_parts").fire_times(arrival, fired)
        return (arrival, cut, fired, np.ascontiguousarray(t.prompt_tokens, i64),
                np.ascontiguousarray(t.output_tokens, i64), np.ascontiguousarray(t.final_kv_tokens, i64))

    def limits_f(self, warmup_s: float) -> np.ndarray:
        """cfg_f of the loop (`limits_f`)."""
        return limits_f(self.sim.cost, warmup_s)

    def state(self, max_seqs: int) -> tuple[np.ndarray, ...]:
        """The loop's scalars, room for `max_seqs` decoders (their rows, simkv.fused.loop_parts) and the
        queue (a ring of one slot per request and one more)."""
        seqs = max_seqs + 1
        return (self.st_i, self.st_f, np.zeros((lp.DEC_I_ROWS, seqs), np.int64), np.zeros((lp.DEC_F_ROWS, seqs)),
                np.zeros(self.sim.table.num_requests + 1, np.int64))

    def recorder_and_scratch(self, max_seqs: int, max_repeat: int) -> tuple[np.ndarray, ...]:
        """The recorder's arrays, the time series and the gap buffer, then the loop's scratch
        arrays (`scratch`)."""
        self._gap_v, self._gap_m = gap_buffers(max_seqs, max_repeat)
        r = self.rec
        return (r._f, r._i, r._gap_hist, self._rows_i, self._rows_f, self._gap_v, self._gap_m,
                *scratch(max_seqs, max_repeat))

    NO_ROUTER = (np.zeros(1, np.int64),)   # a loop's answers ring, unused outside a lockstep fleet

    def drive(self, args: tuple, progress: ProgressFn | None = None,
              on_call: Callable[[], None] | None = None) -> tuple[CompiledRecorder, float] | None:
        """Call the loop until it is done: (the recorder, the clock at the end), the table written;
        None, the table untouched, if it hands the run back. `on_call` answers a loop's CALL."""
        k, st_i, st_f, n = self.k, self.st_i, self.st_f, self.sim.table.num_requests
        while True:
            code = k.run(*args)
            bin_gaps(self.rec._gap_hist, self._gap_v, self._gap_m, st_i)
            if code == lp.BAIL:
                fused.last_outcome[0] = "bailed: " + BAIL_REASONS.get(int(st_i[lp.S_BAIL]), "unknown")
                return None
            if code == lp.DONE:
                break
            if code == getattr(k, "CALL", -1):
                if on_call is None:   # resuming would price the step with a stale value
                    raise RuntimeError(f"{k.__name__} asked for a step's cost and nothing answers it")
                on_call()
            elif progress is not None:
                progress(int(st_i[lp.S_NEXT]), n, float(st_f[lp.SF_NOW]))
        t = self.sim.table
        for name, values in self.out.items():
            getattr(t, name)[:] = values
        series_into(self.rec, self._rows_i, self._rows_f, st_i, st_f)
        fused.last_outcome[0] = "fused"
        return self.rec, float(st_f[lp.SF_NOW])


def start(sim, why_not: Callable, kernel_name: str, max_batch: int, max_tokens: int,
          columns: tuple[str, ...], routed: np.ndarray | None = None) -> FusedRun | None:
    """The start every fused run shares: None, nothing changed, where the run is not the loop's
    kind (`why_not`), not long enough for compiled kernels to pay, numba is missing, or the cost
    model's decode curves differ in length; else the run, its state and tables set up for a batch of
    at most `max_batch` sequences and steps of `max_tokens`. `routed`: the replica is a fleet's,
    handed its requests at these times (simkv.fused.fleet, which has decided whether numba pays)."""
    fused.last_outcome[0] = ""
    if why_not(sim) is not None or (routed is None and not wanted(sim)):
        return None
    kernel = compiled.kernels(kernel_name)
    if kernel is None:
        return None
    tables = cost_tables(sim.cost, max_batch, max_tokens)
    if tables is None:
        fused.last_outcome[0] = "bailed: decode-attention curves of different lengths"
        return None
    run = FusedRun(sim, kernel, columns, routed)
    if not run.usable:
        return None
    run.tables = tables
    run.st_i[lp.S_FREE] = sim.scheduler.kv.num_blocks
    return run
