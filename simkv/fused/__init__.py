"""Fused engines: a whole replica (arrivals, policy, allocator, batch, step time, recorder) in one
compiled loop, for the run shapes common enough to pay for it. Each equals the engine it replaces
(simkv.engine.Replica on the pure-Python policies) number for number and hands a run back to it
whenever it meets what it does not model. simkv.fused.paged_fcfs: FCFS continuous batching on paged
blocks; simkv.fused.tgi: TGI v3's chunked batching over reserved blocks; simkv.fused.vllm_v1: vLLM
V1's chunked prefill on the prefix-caching block pool, multi-turn conversations included; all with
the calibrated cost model. simkv.fused.dispatch picks the one a run fits; simkv.fused.driver,
loop_parts and layout are what they share. simkv.fused.fleet runs fleets of such replicas: behind
round robin or random each replica's loop on its own, behind least_loaded all of them in one
lockstep loop (simkv.fused.fleet_loop)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

_OFF = [False]
# what the last fused engine tried did: "fused", "bailed: <reason>" (the default engine ran it), or ""
# (not tried: the run is not of its kind, or not long enough for compiled kernels to pay)
last_outcome = [""]


@contextmanager
def disabled(off: bool = True) -> Iterator[None]:
    """Runs inside use the engine they would use without fused engines (tests and `make bench`
    compare the two)."""
    before = _OFF[0]
    _OFF[0] = off
    try:
        yield
    finally:
        _OFF[0] = before


def allowed() -> bool:
    """Fused engines may run: not turned off by `disabled()` or by the environment (`SIMKV_FUSED=0`;
    `SIMKV_COMPILED=0` turns off every compiled kernel, these included)."""
    return not _OFF[0] and os.environ.get("SIMKV_FUSED") != "0"
