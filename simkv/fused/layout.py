"""The state layout every fused loop shares (simkv.fused.loop_parts), without numba: the Python
sides (simkv.fused.driver) read and set these slots, and importing this module loads no compiler
(numba loads only when a run uses a compiled kernel, simkv.compiled)."""

from __future__ import annotations

# st_i / st_f slots every loop has (a loop's own come after ST_I_SHARED / ST_F_SHARED)
(S_NEXT, S_WHEAD, S_WCOUNT, S_SAMPLE, S_NROWS, S_NGAPS, S_BAIL, S_ITER, S_NDEC, S_ORDER, S_FREE,
 S_UNIFORM, S_ROUTED) = range(13)
# a replica in a lockstep fleet (simkv.fused.fleet_loop): its steps wait for the fleet's hand-overs
# (S_PENDING: a step planned and timed, S_K steps, not yet committed; S_SENS: a hand-over cuts it;
# S_BYSTEP: hand-overs during it gave per-step queue depths; S_CLOSED: no more will come;
# S_AHEAD / S_ACOUNT: its answers not yet seen by the router, a ring of request ids)
S_LOCKSTEP, S_PENDING, S_K, S_SENS, S_BYSTEP, S_CLOSED, S_AHEAD, S_ACOUNT = range(13, 21)
ST_I_SHARED = 21
SF_NOW, SF_DT, SF_ARRIVALS, SF_UNIFORM, SF_HORIZON = range(5)   # SF_UNIFORM: every decoder's last token time, if S_UNIFORM
ST_F_SHARED = 5
# cfg_f of every loop: the cost model's scalars, the warm-up, the longest plausible step
CF_C_ATT, CF_SCALE, CF_HOST, CF_HOST_PER_SEQ, CF_WARMUP, CF_MAX_STEP = range(6)
CFG_F_LEN = 6
# the running decoders, in join order: dec_i rows (D_HOLD: the blocks a paged decoder holds, or the
# slots of a reservation) and dec_f rows
D_RID, D_KV, D_GEN, D_OUT, D_FINAL, D_HOLD, D_MEAS, D_ORDER = range(8)
DEC_I_ROWS = 8
DF_TBT, DF_LAST = range(2)
DEC_F_ROWS = 2
# return codes of a loop; a BAIL's reason is in st_i[S_BAIL]
DONE, PAUSE, BAIL, WAIT = 0, 1, 2, 4   # WAIT: a lockstep replica waits for the fleet (3 is TGI's CALL)
BAIL_TIE, BAIL_STEP_TIME, BAIL_STUCK, BAIL_TABLE, BAIL_NONUNIFORM, BAIL_RING, BAIL_SAME_INSTANT = 1, 2, 3, 4, 5, 6, 7
# the recorder's KV rows and state slots (simkv.kv.base, simkv.metrics.recorder_kernels)
TOKEN, RESERVED, INTERNAL, EXTERNAL, FREE = range(5)
F_W0, F_W1 = 8, 9
NO_LIMIT = 2**63 - 1   # no limit on the requests in the system (the largest int64)
