"""The Python entry points: simulate a scenario (or each of its variants) and get Results."""

from __future__ import annotations

import numpy as np
import simpy

from collections.abc import Callable, Iterator

from simkv.features import frontend
from simkv.metrics.bench import bench_summary, client_sent_s
from simkv.build import Simulation, build
from simkv.files.calibration import calibration_for, calibration_from, moe_table_for
from simkv.cost import select
from simkv.cost.calibrated import Calibration
from simkv.engine import ProgressFn, Replica
from simkv.errors import SimkvError
from simkv.files.scenario_file import expand_sweep, expand_variants
from simkv.fused import dispatch as fused_engines
from simkv.metrics import Recorder, request_latencies, summarize
from simkv.metrics.compiled_recorder import new_recorder
from simkv.features.offload_setup import offload_summary
from simkv.result import Result
from simkv.scenario import Scenario
from simkv.files.traces import trace_for
from simkv.workload.stream import RequestStream, generate_stream


def simulate(scenario: Scenario, variant: str | None = None, *, progress: ProgressFn | None = None,
             stream: RequestStream | None = None) -> Result:
    """Simulate `scenario` (or its variant named `variant`) and return the Result."""
    name, overrides, sim = next(prepared(scenario, variant, stream=stream))
    return with_intervals(run_simulation(sim, name, progress, overrides), sim.scenario)


def simulate_all(scenario: Scenario, *, progress: ProgressFn | None = None) -> dict[str, Result]:
    """Every variant of `scenario` on the identical request stream, in file order."""
    return {name: with_intervals(run_simulation(sim, name, progress, overrides), sim.scenario)
            for name, overrides, sim in prepared(scenario)}


def with_intervals(result: Result, scenario: Scenario) -> Result:
    """The result with summary["intervals"] when run.intervals asks for them (simkv.studies.intervals)."""
    if scenario.run.intervals:
        from simkv.studies.intervals import prediction_intervals
        result.summary["intervals"] = prediction_intervals(scenario, result.name, result.summary, scenario.run.intervals,
                                                           stream_for=stream_for, build=build_simulation,
                                                           run_simulation=run_simulation)
    return result


def simulate_sweep(scenario: Scenario, *, progress: ProgressFn | None = None) -> list[tuple[object, dict[str, Result]]]:
    """[(swept value, {variant: Result})] for every value of the scenario's sweep (one point without)."""
    return [(value, simulate_all(point, progress=progress)) for value, point in expand_sweep(scenario)]


# ---------------------------------------------------------------- the one pipeline: scenario -> simulations
def stream_for(scenario: Scenario) -> RequestStream:
    """The scenario's request stream (its trace, if it names one, read here: the bridge to files)."""
    return generate_stream(scenario.workload, scenario.run, trace_for(scenario.workload.trace))


def prepared(scenario: Scenario, variant: str | None = None, *, stream: RequestStream | None = None,
             locate: Callable[[SimkvError, str], SimkvError] | None = None,
             variant_field: str = "variant") -> Iterator[tuple[str, dict, Simulation]]:
    """(variant name, its overrides, built Simulation) for every variant of `scenario` (or only
    `variant`), all on one request stream, built lazily in file order. `locate(err, name)` rewrites
    a build error to say where it happened. Used by simulate, simulate_all, the CLI (run, sweep,
    capacity) and `simkv validate`, so they all run exactly the same simulation."""
    runs = list(expand_variants(scenario))
    if variant is not None:
        names = [name for name, _ in runs]
        if variant not in names:
            raise SimkvError(f"no variant '{variant}' in the scenario", field=variant_field,
                             fix=f"one of: {', '.join(names)}")
        runs = [(name, sub) for name, sub in runs if name == variant]
    stream = stream if stream is not None else stream_for(scenario)
    for name, sub in runs:
        try:
            sim = _fleet(sub, stream) if sub.fleet is not None else build(sub, stream, cost_inputs(sub))
        except SimkvError as err:
            if locate is None:
                raise
            raise locate(err, name) from None
        yield name, _overrides(scenario, name), sim


def _fleet(scenario: Scenario, stream: RequestStream):
    """A fleet scenario's replicas behind its router, built (simkv.fleet): its pools' scenarios
    derived and their measurements resolved here, like a single replica's."""
    from simkv.fleet.run import Fleet
    from simkv.files.scenario_file import pool_scenarios
    return Fleet(scenario, stream, pool_scenarios(scenario), cost_inputs)


def simulate_fleet(scenario: Scenario, stream: RequestStream, name: str = "base",
                   progress: ProgressFn | None = None, overrides: dict | None = None) -> Result:
    """Simulate a fleet scenario (no variants) over `stream`."""
    return run_simulation(_fleet(scenario, stream), name, progress, overrides)


def build_simulation(scenario: Scenario, stream: RequestStream) -> Simulation:
    """`build` with the scenario's measurements resolved from files (for one already-derived scenario)."""
    return build(scenario, stream, cost_inputs(scenario))


def cost_inputs(scenario: Scenario) -> select.CostInputs:
    """Everything the scenario's step-time model reads from files: the GPU's calibration (also
    under a user step table, which takes swap and host terms from it), the grouped expert GEMMs
    of a mixture-of-experts model, and the rows of a user step table."""
    table = None
    base = scenario
    if not isinstance(scenario.cost, str):     # cost: {table: steps.csv}
        from simkv.files.step_table import read_step_table
        table = read_step_table(scenario.cost.table)
        base = scenario.model_copy(update={"cost": "calibrated"})
    calibration = calibration_of(base)
    moe = None
    if calibration is not None and scenario.model_spec().moe is not None:
        gpu, name = scenario.gpu_spec(), scenario.hardware.gpu if isinstance(scenario.hardware.gpu, str) else None
        moe = moe_table_for(name or "", gpu.calibration) if (name or gpu.calibration) else None
    return select.CostInputs(calibration=calibration, moe_table=moe, step_table=table)


def calibration_of(scenario: Scenario) -> Calibration | None:
    """The fitted measurements the scenario's cost model uses: its GPU entry's `calibration`
    folder, or those shipped for a catalog GPU; None for the roofline or a GPU without any."""
    if scenario.cost != "calibrated":
        return None
    gpu = scenario.gpu_spec()
    if gpu.calibration:
        return _own_calibration(gpu.calibration)
    return calibration_for(scenario.hardware.gpu) if isinstance(scenario.hardware.gpu, str) else None


def make_cost(scenario: Scenario, max_tokens: int = 16384):
    """(step-time model, its description): calibrated where the GPU has measurements."""
    return select.make_cost(scenario, cost_inputs(scenario), max_tokens)


def _own_calibration(folder: str) -> Calibration:
    """A `simkv calibrate` folder named by a GPU entry, fitted; a clear error if it is not one."""
    try:
        return calibration_from(folder)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise SimkvError(f"cannot use the calibration folder {folder}: {err}", field="gpus.calibration",
                         fix="point it at a folder written by `simkv calibrate` (with device.json and the four CSVs)") from None


def _overrides(scenario: Scenario, name: str) -> dict:
    return next((dict(v.set) for v in scenario.variants if v.name == name), {})


def run_simulation(sim: Simulation, name: str, progress: ProgressFn | None = None,
                   overrides: dict | None = None) -> Result:
    """Run a built simulation (or fleet) to completion (every admitted request finished);
    `overrides` are the variant's dotted settings, recorded in the summary."""
    if not isinstance(sim, Simulation):   # a fleet (simkv.fleet.run.Fleet)
        from simkv.fleet.summary import fleet_result
        sim.run(progress)
        summary, cols, series = fleet_result(sim, name, overrides or {}, _request_columns, _setup)
        return Result(name=name, scenario=sim.scenario, summary=summary, requests=cols, timeseries=series)
    fused = fused_engines.run_fused(sim, progress)
    if fused is not None:   # the same numbers in one compiled loop (simkv.fused)
        recorder, now = fused
    else:
        recorder, now = _run_replica(sim, progress)
    if progress is not None:
        progress(sim.table.num_requests, sim.table.num_requests, now)
    extra = {"scenario": sim.scenario.name, "variant": name, "overrides": overrides or {}, "setup": _setup(sim),
             "workload_effects": {"outputs_truncated_at_max_model_len": sim.num_outputs_truncated}}
    spec_stats = getattr(sim.scheduler, "speculative_stats", None)
    if spec_stats is not None:  # engine.speculative (simkv.sched.speculative)
        extra["speculative"] = spec_stats()
    lora_stats = getattr(sim.scheduler, "lora_stats", None)
    if lora_stats is not None:  # engine.lora with workload.lora (simkv.sched.lora)
        extra["lora"] = {"adapters": sim.scenario.workload.lora.adapters,
                         "popularity": sim.scenario.workload.lora.popularity, **lora_stats()}
    classes = [(c.name, c.slo) for c in sim.scenario.workload.classes] if sim.scenario.workload.classes else None
    extra["bench"] = bench_summary(sim.table, recorder, frontend.resolve(sim.scenario.frontend, sim.engine.preset))
    summary = summarize(sim.table, recorder, slo=sim.scenario.slo, extra=extra, classes=classes)
    offload = offload_summary(sim, recorder.w0, now)
    if offload is not None:   # host / SSD tiers (simkv.kv.offload)
        summary["kv_cache"]["offload"] = offload
    return Result(name=name, scenario=sim.scenario, summary=summary, requests=_request_columns(sim),
                  timeseries=recorder.time_series())


def _run_replica(sim: Simulation, progress: ProgressFn | None) -> tuple[Recorder, float]:
    """The default engine (simkv.engine.Replica on simpy): the recorder, and the clock at the end."""
    env = simpy.Environment()
    run = sim.scenario.run
    closed = not np.isfinite(sim.measure_end_s)   # closed loop / offline: the engine closes the window at run time
    recorder = new_recorder(sim.memory.capacity_tokens, sim.measure_start_s, 1.0 if closed else sim.measure_end_s,
                            run.time_series_points, sim.compiled_recorder)
    if closed:
        recorder.w1 = np.inf
    replica = Replica(env, sim.table, sim.scheduler, sim.cost, recorder, progress)
    env.run(until=replica.done)
    return recorder, env.now


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
    for key in ("host_overhead_s", "host_per_seq_s"):   # as resolved by simkv.features.host_overhead (the cost holds them)
        if getattr(sim.cost, key, None) is not None:
            out[key] = float(getattr(sim.cost, key))
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
