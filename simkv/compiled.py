"""Whether a run uses simkv's compiled kernels (numba), and finding them.

Three parts of a run have a compiled twin that gives the same numbers as its pure-Python (numpy)
reference, which stays the default for short runs and is what the tests compare against: the
prefix cache's block pool (simkv.kv.pool_kernels), the recorder's accumulation
(simkv.metrics.recorder_kernels) and the calibrated cost model's decode-attention sums
(simkv.cost.attention_kernels). Two run shapes also have a whole fused engine (simkv.fused).

numba costs a process ~0.35 s to import and ~0.45 s for its first call (a few ms more per kernel
loaded from its on-disk cache), so they are used only where that pays:
- the pool and the fused engines from COMPILED_FROM_REQUESTS requests on;
- the recorder from RECORDER_FROM_REQUESTS;
- the attention sums save too little (~2.5 µs a request on chat traffic, 5-12% on TGI and
  multi-turn runs) to pay for it alone, so they run only where numba is loaded already (with the
  pool; in the later runs of a sweep).

`SIMKV_COMPILED=1` always uses them, `SIMKV_COMPILED=0` never does; without numba installed they
are never used. Results are the same either way (tests/test_compiled_prefix_cache.py,
tests/test_compiled_recorder.py, tests/test_compiled_attention.py, tests/test_fused_engine.py).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

# the kernels pay from about this many requests: they save ~70 µs a request on TGI and ~440 µs on
# multi-turn vLLM V1 against ~0.8 s of numba start-up (docs/performance.md, 2026-12-07)
COMPILED_FROM_REQUESTS = 5000
# the recorder's kernel saves ~9 µs an iteration (~12 µs a request on paged chat, ~20 on TGI), so
# alone it pays for numba's start-up from ~50,000 requests (docs/performance.md, 2026-12-07)
RECORDER_FROM_REQUESTS = 50_000


def wanted(num_requests: int, pays_alone_from: int | None = COMPILED_FROM_REQUESTS) -> bool:
    """Should a run of `num_requests` use a set of compiled kernels (the rule in the module
    docstring)? `pays_alone_from`: the run length from which that set pays for numba's start-up
    by itself; None if it never does, so it runs only where numba is loaded already."""
    switch = os.environ.get("SIMKV_COMPILED")
    if switch in ("0", "1"):
        return switch == "1"
    return "numba" in sys.modules or (pays_alone_from is not None and num_requests >= pays_alone_from)


def kernels(module: str) -> ModuleType | None:
    """The kernel module `module` (imported, so compiled or loaded from numba's cache on first use),
    or None where numba is missing or `SIMKV_COMPILED=0`. A numba that cannot set the kernels up (no
    writable cache location raises RuntimeError at import, for one) also gives None: the pure-Python
    paths give the same results, only slower."""
    if os.environ.get("SIMKV_COMPILED") == "0":
        return None
    try:
        return importlib.import_module(module)
    except Exception:   # (see the docstring)
        return None
