"""The Python entry points: simulate a scenario (or each of its variants) and get Results."""

from __future__ import annotations

import numpy as np
import simpy

from simkv import frontend
from simkv.bench_metrics import bench_summary, client_sent_s
from simkv.build import Simulation, build
from simkv.engine import ProgressFn, Replica
from simkv.loading import expand_sweep, expand_variants
from simkv.metrics import Recorder, request_latencies, summarize
from simkv.result import Result
from simkv.scenario import Scenario
from simkv.trace_io import trace_for
from simkv.workload.stream import RequestStream, generate_stream


def simulate(scenario: Scenario, variant: str | None = None, *, progress: ProgressFn | None = None,
             stream: RequestStream | None = None) -> Result:
    """Simulate `scenario` (or its variant named `variant`) and return the Result."""
    runs = dict(expand_variants(scenario))
    name = variant if variant is not None else next(iter(runs))
    if name not in runs:
        raise KeyError(f"no variant named {name!r}; have {', '.join(runs)}")
    stream = stream if stream is not None else generate_stream(scenario.workload, scenario.run,
                                                               trace_for(scenario.workload.trace))
    if runs[name].fleet is not None:  # several replicas behind a router (simkv.fleet)
        from simkv.fleet.run import simulate_fleet
        return simulate_fleet(runs[name], stream, name, progress, _overrides(scenario, name))
    return run_simulation(build(runs[name], stream), name, progress, _overrides(scenario, name))


def simulate_all(scenario: Scenario, *, progress: ProgressFn | None = None) -> dict[str, Result]:
    """Every variant of `scenario` on the identical request stream, in file order."""
    stream = generate_stream(scenario.workload, scenario.run, trace_for(scenario.workload.trace))
    return {name: _run_one(sub, stream, name, progress, _overrides(scenario, name))
            for name, sub in expand_variants(scenario)}


def _run_one(sub: Scenario, stream: RequestStream, name: str, progress, overrides: dict) -> Result:
    if sub.fleet is not None:  # several replicas behind a router (simkv.fleet)
        from simkv.fleet.run import simulate_fleet
        return simulate_fleet(sub, stream, name, progress, overrides)
    return run_simulation(build(sub, stream), name, progress, overrides)


def simulate_sweep(scenario: Scenario, *, progress: ProgressFn | None = None) -> list[tuple[object, dict[str, Result]]]:
    """[(swept value, {variant: Result})] for every value of the scenario's sweep (one point without)."""
    return [(value, simulate_all(point, progress=progress)) for value, point in expand_sweep(scenario)]


def _overrides(scenario: Scenario, name: str) -> dict:
    return next((dict(v.set) for v in scenario.variants if v.name == name), {})


def run_simulation(sim: Simulation, name: str, progress: ProgressFn | None = None,
                   overrides: dict | None = None) -> Result:
    """Run a built simulation to completion (every admitted request finished); `overrides` are
    the variant's dotted settings, recorded in the summary."""
    env = simpy.Environment()
    run = sim.scenario.run
    recorder = Recorder(sim.memory.capacity_tokens, sim.measure_start_s, sim.measure_end_s, run.time_series_points)
    if not np.isfinite(sim.measure_end_s):  # closed loop / offline: the engine closes the window at run time
        recorder = Recorder(sim.memory.capacity_tokens, sim.measure_start_s, 1.0, run.time_series_points)
        recorder.w1 = np.inf
    replica = Replica(env, sim.table, sim.scheduler, sim.cost, recorder, progress)
    env.run(until=replica.done)
    if progress is not None:
        progress(sim.table.num_requests, sim.table.num_requests, env.now)
    extra = {"scenario": sim.scenario.name, "variant": name, "overrides": overrides or {}, "setup": _setup(sim),
             "workload_effects": {"outputs_truncated_at_max_model_len": sim.num_outputs_truncated}}
    classes = [(c.name, c.slo) for c in sim.scenario.workload.classes] if sim.scenario.workload.classes else None
    extra["bench"] = bench_summary(sim.table, recorder, frontend.resolve(sim.scenario.frontend, sim.engine.preset))
    summary = summarize(sim.table, recorder, slo=sim.scenario.slo, extra=extra, classes=classes)
    return Result(name=name, scenario=sim.scenario, summary=summary, requests=_request_columns(sim),
                  timeseries=recorder.time_series())


def _setup(sim: Simulation) -> dict:
    s, e = sim.scenario, sim.engine
    model = s.model if isinstance(s.model, str) else "custom"
    gpu = s.hardware.gpu if isinstance(s.hardware.gpu, str) else "custom"
    return {"model": model, "gpu": gpu, "tensor_parallel": s.hardware.tensor_parallel,
            "preset": e.preset, "scheduler": e.scheduler, "allocator": e.allocator, "block_size": e.block_size,
            "reservation": e.reservation if e.allocator == "contiguous" else None,
            "max_num_seqs": sim.limits.max_num_seqs, "max_num_batched_tokens": sim.limits.max_num_batched_tokens,
            "max_model_len": sim.limits.max_model_len, "cost_model": sim.cost_name, "memory": sim.memory.describe(),
            "engine": resolved_engine(sim), "cost_sources": cost_sources(sim.cost)}


def resolved_engine(sim: Simulation) -> dict:
    """Every engine field as it ran: the preset applied, the derived limits filled in (JSON-safe)."""
    e = sim.engine if sim.engine is not None else sim.scenario.engine
    out = e.model_dump(mode="json")
    out.update(max_model_len=sim.limits.max_model_len, max_num_batched_tokens=sim.limits.max_num_batched_tokens,
               max_num_seqs=sim.limits.max_num_seqs)
    if out.get("activation_reserve_gib") is None:
        out["activation_reserve_gib"] = sim.memory.describe().get("activation_reserve_gib")
    return out


def cost_sources(cost) -> dict:
    """Per cost component, where its numbers come from (the cost model says; see its sources())."""
    sources = getattr(cost, "sources", None)
    return sources() if sources is not None else {"all": f"unknown: {type(cost).__name__} does not say"}


def _request_columns(sim: Simulation) -> dict:
    t = sim.table
    cols = {"req_id": range(t.num_requests), "group": t.group, "arrival_s": t.arrival_s,
            "class_id": t.class_id if t.class_id is not None else np.zeros(t.num_requests, dtype=np.int64), "prompt_tokens": t.prompt_tokens,
            "output_tokens": t.output_tokens, "max_new_tokens": t.max_new_tokens, "status": t.status,
            "reject_reason": t.reject_reason, "num_preemptions": t.num_preemptions,
            "first_scheduled_s": t.first_scheduled_s, "first_token_s": t.first_token_s, "finish_s": t.finish_s,
            "sent_s": client_sent_s(t)}
    cols.update(request_latencies(t))
    return cols
