"""Fused engines: a whole replica (arrivals, policy, allocator, batch, step time, recorder) in one
compiled loop, for the run shapes common enough to pay for it. Each equals the reference engine
(simkv.engine.Replica on the pure-Python policies) number for number and hands a run back to it
whenever it meets what it does not model. simkv.fused.paged_fcfs: FCFS continuous batching on paged
blocks with the calibrated cost model."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

_OFF = [False]


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
    return not _OFF[0]
