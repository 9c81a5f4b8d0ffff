"""Each pool's scenario (the fleet scenario with the pool's `set`) and its replicas: every replica a
full simkv engine (own allocator, scheduler and recorder); the replicas of a pool share one request
table (each request row is touched only by the replica it was routed to) and one cost model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from simkv.build import Simulation, build, make_scheduler, reserves_upfront
from simkv.cost.select import CostInputs
from simkv.errors import SimkvError
from simkv.kv.buddy import BuddyAllocator
from simkv.kv.contiguous import ContiguousAllocator
from simkv.kv.paged import PagedAllocator
from simkv.kv.compiled_prefix_cache import prefix_cache_allocator
from simkv.metrics.compiled_recorder import new_recorder
from simkv.workload.stream import RequestStream

if TYPE_CHECKING:  # the schema is an input: the core never imports it at run time
    from simkv.scenario import Scenario


@dataclass
class Pool:
    """One pool: its scenario, the template simulation (replica 0's parts) and its replicas' parts."""

    index: int
    name: str
    scenario: Scenario
    sim: Simulation
    schedulers: list = field(default_factory=list)
    recorders: list = field(default_factory=list)
    classes: list[str] | None = None

    @property
    def num_replicas(self) -> int:
        return len(self.schedulers)


def build_pools(scenario: Scenario, stream: RequestStream, subs: list[tuple[str, Scenario]],
                inputs_for: Callable[[Scenario], CostInputs]) -> list[Pool]:
    """Every pool's replicas, ready to run on one clock. `subs`: each pool's derived scenario
    (simkv.files.scenario_file.pool_scenarios) and `inputs_for(pool scenario)` its measurements, both resolved
    by the run driver."""
    pools = []
    arrival = stream.arrival_s.copy()   # one arrival column for the fleet: follow-up turns are set in it
    for i, ((name, sub), spec) in enumerate(zip(subs, scenario.fleet.pools)):
        try:
            sim = build(sub, stream, inputs_for(sub))
        except SimkvError as err:
            raise SimkvError(err.message, field=f"{err.field} (fleet pool {name})", fix=err.fix) from None
        sim.table.arrival_s = arrival
        pool = Pool(i, name, sub, sim, classes=spec.classes)
        auto = scenario.fleet.autoscale
        count = auto.max if auto is not None and auto.pool == name else spec.replicas   # autoscaled: every engine it may use
        for r in range(count):
            sched = sim.scheduler if r == 0 else _scheduler(sim, r)
            pool.schedulers.append(sched)
            pool.recorders.append(new_recorder(sim.memory.capacity_tokens, sim.measure_start_s, sim.measure_end_s,
                                               sub.run.time_series_points, sim.compiled_recorder))
        pools.append(pool)
    return pools


def _scheduler(sim: Simulation, r: int):
    """Replica r's own allocator and scheduler, made as `build` makes replica 0's."""
    s, e, mem = sim.scenario, sim.engine, sim.memory
    beams = s.workload.sampling.beam_width > 1
    reserving = reserves_upfront(e)
    if e.allocator == "paged" and (e.prefix_caching or beams):
        allocator = prefix_cache_allocator(mem.num_blocks, e.block_size, sim.table.num_requests)
        if reserving:
            allocator.reserve_upfront = True
    elif e.allocator == "paged":
        allocator = PagedAllocator(mem.num_blocks, e.block_size, reserve_upfront=reserving)
    else:
        allocator = (BuddyAllocator(mem.capacity_tokens) if e.placement == "buddy"
                     else ContiguousAllocator(mem.capacity_tokens, e.placement))
    assert type(allocator) is type(sim.allocator), "fleet replicas must get replica 0's allocator kind"
    kv_per_token = s.model_spec().kv_bytes_per_token(e.kv_cache_dtype, s.hardware.tensor_parallel)
    sched = make_scheduler(e, sim.table, allocator, sim.limits, mem, s.run.warmup_s, kv_per_token)
    sched.batch.rng = np.random.default_rng(np.random.SeedSequence([s.run.seed, 7, r]))
    return sched
