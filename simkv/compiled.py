"""Whether a run uses simkv's compiled kernels (numba), and finding them.

Three parts of a run have a compiled twin that gives the same numbers as its pure-Python (numpy)
reference, which stays the default for short runs and is what the tests compare against: the
prefix cache's block pool (simkv.kv.pool_kernels), the recorder's accumulation
(simkv.metrics.recorder_kernels) and the calibrated cost model's decode-attention sums
(simkv.cost.attention_kernels). Three run shapes also have a whole fused engine (simkv.fused).

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

import hashlib
import importlib
import os
import sys
from pathlib import Path
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


# the modules of compiled kernels: numba caches each function on disk keyed by its own file's stamp
# only, so a cached function keeps the code of the functions it calls from another module after
# that module changed (a fused loop calls simkv.fused.loop_parts; a fleet's loop calls the loops)
KERNEL_MODULES = ("simkv/fused", "simkv/kv/pool_kernels.py", "simkv/metrics/recorder_kernels.py",
                  "simkv/cost/attention_kernels.py")
_CHECKED = [False]


def drop_stale_caches() -> None:
    """Delete numba's cached kernels of simkv (the `__pycache__/*.nbi` / `.nbc` files beside
    KERNEL_MODULES) when any of their sources changed since they were cached (a hash of all of them,
    kept beside the caches), so no cached function runs code older than the functions it calls.
    Only numba's default cache location (no NUMBA_CACHE_DIR); nothing else is touched, and a cache
    that cannot be read or written is left as it is."""
    if _CHECKED[0] or os.environ.get("NUMBA_CACHE_DIR"):
        return
    _CHECKED[0] = True
    root = Path(__file__).resolve().parent.parent
    try:
        sources = sorted(p for part in KERNEL_MODULES
                         for p in ((root / part).glob("*.py") if (root / part).is_dir() else [root / part]))
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
        caches = sorted({p.parent / "__pycache__" for p in sources})
        stamp = root / "simkv" / "fused" / "__pycache__" / "kernel-sources.sha256"
        if stamp.is_file() and stamp.read_text() == digest:
            return
        names = {p.stem for p in sources}
        for folder in caches:
            for f in folder.glob("*.nb[ic]"):
                if f.name.split(".", 1)[0] in names:
                    f.unlink()
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:   # a read-only install: numba then cannot cache there either
        return


def kernels(module: str) -> ModuleType | None:
    """The kernel module `module` (imported, so compiled or loaded from numba's cache on first use),
    or None where numba is missing or `SIMKV_COMPILED=0`. A numba that cannot set the kernels up (no
    writable cache location raises RuntimeError at import, for one) also gives None: the pure-Python
    paths give the same results, only slower."""
    if os.environ.get("SIMKV_COMPILED") == "0":
        return None
    drop_stale_caches()
    try:
        return importlib.import_module(module)
    except Exception:   # (see the docstring)
        return None
