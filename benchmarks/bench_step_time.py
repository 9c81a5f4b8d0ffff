"""Cost of one step-time query (the engine asks once per simulated step).

Times `CalibratedCost.seconds(plan)` for a 256-sequence ragged decode batch and for a mixed step
(one 512-token prefill + 255 decodes), and `decode_run_seconds` per step of a 64-step run, on
Llama-3-8B / H100, next to the roofline model in the same run.

    python benchmarks/bench_step_time.py
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from simkv.studies.step_time import cost_model  # noqa: E402
from simkv.sched.base import StepPlan  # noqa: E402


def per_call_us(fn, repeat: int = 20000) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    ctx = rng.integers(100, 8000, 256)
    decode = StepPlan(decode_ids=np.arange(256), decode_ctx=ctx)
    mixed = StepPlan(decode_ids=np.arange(255), decode_ctx=ctx[:255], prefill_ids=np.array([999]),
                     prefill_new=np.array([512]), prefill_ctx=np.array([512]))
    print(f"{'model':12s} {'256-seq decode':>15s} {'mixed (1 prefill + 255)':>24s} {'64-step decode run, per step':>29s}")
    for name in ("calibrated", "roofline"):
        cost, _ = cost_model("h100", "llama3-8b", cost=name)
        a = per_call_us(lambda: cost.seconds(decode))
        b = per_call_us(lambda: cost.seconds(mixed))
        c = per_call_us(lambda: cost.decode_run_seconds(ctx, 64), repeat=2000) / 64
        print(f"{name:12s} {a:13.1f} us {b:22.1f} us {c:27.2f} us")


if __name__ == "__main__":
    main()
