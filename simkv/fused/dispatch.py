"""Which fused engine runs a simulation, if any (simkv.fused): the first whose `why_not` finds
nothing it does not model."""

from __future__ import annotations

from simkv import fused
from simkv.fused import paged_fcfs, tgi, vllm_v1
from simkv.fused.driver import ProgressFn
from simkv.metrics.compiled_recorder import CompiledRecorder

ENGINES = (paged_fcfs, tgi, vllm_v1)
FLEET_ENGINES = ENGINES   # the loops a fleet's replica runs in too (simkv.fused.fleet)


def run_fused(sim, progress: ProgressFn | None = None) -> tuple[CompiledRecorder, float] | None:
    """(the recorder, the clock at the end) of `sim` run by the fused engine it fits, the request
    table filled in; None, nothing changed, where the default engine must run it."""
    fused.last_outcome[0] = ""
    for engine in ENGINES:
        if engine.why_not(sim) is None:
            return engine.run_fused(sim, progress)
    return None
