"""Scheduler policies: turn engine state into a StepPlan each iteration.

`SCHEDULERS` maps each `engine.scheduler` name to its policy class; a class declares its `name`,
the allocator it `needs` and whether it `supports_prefix_caching`, and builds itself with
`from_engine` (see `simkv.sched.queue.QueuedScheduler`). A new policy is one module plus one entry
below. The wrappers `sched.speculative` and `sched.lora` wrap any of them."""

from simkv.sched.base import Scheduler, StepOutcome, StepPlan
from simkv.sched.chunked import ChunkedPrefillScheduler
from simkv.sched.continuous import ContinuousBatchingScheduler
from simkv.sched.prefill_first import PrefillFirstScheduler
from simkv.sched.sglang import SglangScheduler
from simkv.sched.static import StaticBatchScheduler
from simkv.sched.tgi import TgiScheduler
from simkv.sched.trtllm import TrtllmScheduler

SCHEDULERS = {cls.name: cls for cls in (ContinuousBatchingScheduler, ChunkedPrefillScheduler, PrefillFirstScheduler,
                                        TgiScheduler, SglangScheduler, TrtllmScheduler, StaticBatchScheduler)}

__all__ = ["SCHEDULERS", "Scheduler", "StepPlan", "StepOutcome", "ContinuousBatchingScheduler", "ChunkedPrefillScheduler",
           "PrefillFirstScheduler", "TgiScheduler", "SglangScheduler", "TrtllmScheduler", "StaticBatchScheduler"]
