"""`simkv validate`: simulate a scenario, execute exactly its step plans on a real mini engine
(random weights of the scenario's architecture, optionally fewer layers) over a paged and over
a contiguous KV store, and compare measured with predicted step times and latencies."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from simkv.errors import SimkvError
from simkv.files.scenario_file import apply_overrides, expand_variants, validate_scenario
from simkv.scenario import Scenario
from simkv.gpu.schedule import ScheduleTrace, record_schedule
from simkv.gpu.timeline import percentiles, replay_timeline

# the architecture `--device cpu` runs: small enough for the test suite, the same code path
TINY = {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
        "intermediate_size": 128, "vocab_size": 512, "num_params": 200_000, "max_position_embeddings": 8192,
        "source": "simkv validate --device cpu: a tiny Llama-style shape"}


def torch_or_error():
    try:
        import torch
    except ImportError:
        raise SimkvError("validation runs a real engine and needs PyTorch", field="--gpu/--device",
                         fix="pip install 'simkv[gpu]' (a CPU build of torch is enough for --device cpu)") from None
    return torch


def cap_cpu_threads(torch, device: str, threads: int = 2) -> None:
    """On a CPU, at most `threads` torch threads (tiny shapes gain nothing from more, and a shared
    machine's other jobs keep theirs)."""
    if device == "cpu" and torch.get_num_threads() > threads:
        torch.set_num_threads(threads)


SHAPES = ("tiny", "model")


def prepare(scenario: Scenario, device: str, layers: int | None, requests: int | None,
            shapes: str | None = None) -> Scenario:
    """The scenario the mini engine can run: its model with `layers` layers (or the TINY shape:
    the default on the CPU), one GPU, one sequence per request, no prefix caching (the mini
    engine shares no blocks)."""
    if scenario.hardware.tensor_parallel != 1:
        raise SimkvError("the mini engine runs on one GPU", field="hardware.tensor_parallel",
                         fix="set --set hardware.tensor_parallel=1 (a shard's shape can be given as the model)")
    spec = scenario.model_spec().model_dump()
    if spec.get("mlp", "gated") != "gated":
        raise SimkvError("the mini engine implements gated (SwiGLU) MLPs", field="model.mlp", fix="use a Llama-style model")
    shapes = shapes or ("tiny" if device == "cpu" else "model")
    if shapes not in SHAPES:
        raise SimkvError(f"unknown shapes '{shapes}'", field="--shapes", fix=f"one of: {', '.join(SHAPES)}")
    if shapes == "tiny":
        spec = {**TINY, "num_layers": layers or TINY["num_layers"]}
    elif layers:
        per_layer = (spec["hidden_size"] * (spec["num_heads"] + 2 * spec["num_kv_heads"]) * spec["head_dim"]
                     + spec["num_heads"] * spec["head_dim"] * spec["hidden_size"]
                     + 3 * spec["hidden_size"] * spec["intermediate_size"] + 2 * spec["hidden_size"])
        spec = {**spec, "num_layers": layers,
                "num_params": max(spec["num_params"] - (spec["num_layers"] - layers) * per_layer, per_layer),
                "source": f"{spec.get('source', '')}; cut to {layers} layers for validation"}
    name = f"validate-{scenario.model if isinstance(scenario.model, str) else 'model'}-{spec['num_layers']}l"
    changes = {"model": name, f"models.{name}": spec, "engine.prefix_caching": False,
               "workload.sampling": {"n": 1}, "variants": [], "sweep": None}
    if requests:
        changes.update({"run.num_requests": requests, "run.duration_s": None, "run.warmup_s": 0})
    raw = apply_overrides(scenario.model_dump(exclude_unset=True), changes, origin="validate")
    return validate_scenario(raw, "validate")


@dataclass
class Validation:
    scenario: Scenario
    trace: ScheduleTrace
    device: str
    device_name: str
    dtype: str
    measured: dict[str, np.ndarray]       # store kind -> seconds per step
    outputs_identical: bool
    tokens_generated: int
    tokens_expected: int
    swaps: int
    recomputes: int
    decode_kernel: str = "gather"
    variant: str = "base"                 # which of the scenario's variants ran

    @cached_property
    def predicted(self) -> np.ndarray:
        return np.array([s.duration_s for s in self.trace.steps])

    @cached_property
    def timelines(self) -> dict[str, dict]:
        """Request latencies of the schedule under the predicted step times ('simulated') and
        under each KV store's measured ones."""
        return {"simulated": replay_timeline(self.trace, self.predicted),
                **{kind: replay_timeline(self.trace, seconds) for kind, seconds in self.measured.items()}}

    def step_errors(self, kind: str) -> dict:
        """|predicted − measured| / measured over the steps: median, p90, and the median signed error."""
        m, p = self.measured[kind], self.predicted
        rel = (p - m) / m
        prefill = np.array([len(s.prefill_ids) > 0 for s in self.trace.steps])
        out = {"steps": int(len(m)), "median_abs": float(np.median(np.abs(rel))), "p90_abs": float(np.percentile(np.abs(rel), 90)),
               "median_signed": float(np.median(rel)), "measured_total_s": float(m.sum()), "predicted_total_s": float(p.sum())}
        for name, mask in (("decode_only", ~prefill), ("with_prefill", prefill)):
            out[name] = ({"steps": int(mask.sum()), "median_abs": float(np.median(np.abs(rel[mask]))),
                          "p90_abs": float(np.percentile(np.abs(rel[mask]), 90))} if mask.any() else None)
        return out

    def latencies(self, kind: str) -> dict:
        sim, real = self.timelines["simulated"], self.timelines[kind]
        return {metric: {"simulated": percentiles(sim[f"{metric}_s"]), "measured": percentiles(real[f"{metric}_s"])}
                for metric in ("ttft", "tbt", "e2e")}

    @cached_property
    def summary(self) -> dict:
        s = self.scenario
        return {"scenario": s.name, "variant": self.variant, "device": self.device, "device_name": self.device_name, "dtype": self.dtype,
                "model": s.model_spec().model_dump(include={"num_layers", "hidden_size", "num_heads", "num_kv_heads",
                                                              "head_dim", "intermediate_size", "vocab_size"}),
                "predicted_for": s.hardware.gpu if isinstance(s.hardware.gpu, str) else "custom GPU",
                "cost_model": self.trace.result.summary["setup"]["cost_model"], "decode_kernel": self.decode_kernel,
                "steps": len(self.trace.steps), "requests": int(len(self.trace.arrival_s)),
                "tokens_generated": self.tokens_generated, "tokens_expected": self.tokens_expected,
                "outputs_identical_paged_vs_contiguous": self.outputs_identical,
                "preemptions": {"swap": self.swaps, "recompute": self.recomputes},
                "step_time_error": {k: self.step_errors(k) for k in self.measured},
                "latency_s": {k: self.latencies(k) for k in self.measured}}


def _stores(trace: ScheduleTrace, shape, block_size: int, max_len: int, dtype, device: str):
    """A paged and a contiguous store sized from the schedule's own peak use."""
    from simkv.gpu.kv_store import ContiguousKVStore, PagedKVStore
    from simkv.gpu.replay import replay
    counter = _CountingStore(block_size)
    replay(trace, _NoModel(shape), counter)
    paged = PagedKVStore(shape.num_layers, counter.peak_blocks + 1, block_size, shape.kv_heads, shape.head_dim, dtype, device)
    contiguous = ContiguousKVStore(shape.num_layers, (counter.peak_seqs + 1) * max_len, max_len, shape.kv_heads,
                                   shape.head_dim, dtype, device)
    return {"paged": paged, "contiguous": contiguous}


class _CountingStore:
    """Tracks what a schedule holds (blocks, sequences) without any tensors."""

    def __init__(self, block_size: int) -> None:
        self.block_size, self.lengths = block_size, {}
        self.peak_blocks = self.peak_seqs = 0

    def ensure(self, rid, length):
        self.lengths[rid] = max(self.lengths.get(rid, 0), length)
        self.peak_blocks = max(self.peak_blocks, sum(-(-n // self.block_size) for n in self.lengths.values()))
        self.peak_seqs = max(self.peak_seqs, len(self.lengths))

    def free(self, rid):
        self.lengths.pop(rid, None)

    def swap_out(self, rid, length):
        self.free(rid)
        return (length,)

    def swap_in(self, rid, host):
        self.ensure(rid, host[0])


class _NoModel:
    device = "cpu"

    def __init__(self, shape) -> None:
        self.shape = shape

    def step(self, segments, store):
        return {seg.rid: 0 for seg in segments if seg.sample}


def choose_variant(scenario: Scenario, variant: str | None) -> str:
    """The variant to validate (default the first), or an error naming the scenario's variants."""
    names = [name for name, _ in expand_variants(scenario)]
    if variant is None:
        return names[0]
    if variant not in names:
        raise SimkvError(f"no variant '{variant}' in the scenario", field="--variant",
                         fix=f"one of: {', '.join(names)}" + ("" if scenario.variants else " (the scenario has no variants)"))
    return variant


def stderr_log(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


class StepProgress:
    """`progress(done, total)` for a replay: a line on stderr about every `every_s` seconds
    (and at the end), with steps done, rate and the time left."""

    def __init__(self, log: Callable[[str], None], label: str, every_s: float = 5.0) -> None:
        self.log, self.label, self.every_s = log, label, every_s
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / done * (total - done) if done else 0.0
        self.log(f"{self.label}: {done}/{total} steps ({100 * done / max(total, 1):.0f}%) in {elapsed:.1f} s"
                 + (f", ~{left:.0f} s left" if done < total else ""))


def validate(scenario: Scenario, device: str = "cpu", layers: int | None = None, requests: int | None = None,
             variant: str | None = None, seed: int = 0, warmup_steps: int = 8, shapes: str | None = None,
             log: Callable[[str], None] = stderr_log) -> Validation:
    """Simulate, replay on the mini engine (paged and contiguous), measure. `log` gets a line per
    phase and progress lines during the replays (default: stderr)."""
    torch = torch_or_error()
    from simkv.gpu.mini_model import MiniModel
    from simkv.gpu.replay import replay
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SimkvError("no CUDA GPU is visible to PyTorch", field="--gpu", fix="run on a GPU machine, or use --device cpu")
    name = choose_variant(scenario, variant)
    # the variant's own scenario, then cut down: prepare drops `variants`, so choosing after it finds none
    sc = prepare(dict(expand_variants(scenario))[name], device, layers, requests, shapes)
    started = time.perf_counter()
    log(f"simulating {sc.name} and recording its schedule")
    trace = record_schedule(sc)
    if not trace.steps:
        raise SimkvError("the simulation ran no steps", field="workload", fix="give it some requests")
    shape = sc.model_spec().shard(1)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    if device == "cpu" and (shapes or "tiny") == "tiny":
        cap_cpu_threads(torch, device)
    log(f"{len(trace.steps)} steps of {len(trace.arrival_s)} requests recorded in {time.perf_counter() - started:.1f} s; "
        f"mini engine: {shape.num_layers} layers x hidden {shape.hidden}, {str(dtype).replace('torch.', '')} on {device}")
    model = MiniModel(shape, device, dtype, seed)
    engine = trace.result.summary["setup"]
    measured, outputs, extra = {}, {}, None
    for kind, store in _stores(trace, shape, engine["block_size"], engine["max_model_len"], dtype, device).items():
        log(f"{kind} KV store: warm-up ({min(warmup_steps, len(trace.steps))} steps)")
        replay(trace, model, store, seed, max_steps=warmup_steps)          # warm-up: allocator, kernels, caches
        store.free_all()
        run = replay(trace, model, store, seed, progress=StepProgress(log, f"{kind} KV store"))
        measured[kind], outputs[kind] = run.seconds, run.outputs
        extra = extra or run
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    generated = sum(len(v) for v in outputs["paged"].values())
    served = ~np.isnan(np.asarray(trace.result.requests["first_token_s"], dtype=float))
    return Validation(sc, trace, device, device_name, str(dtype).replace("torch.", ""), measured,
                      outputs["paged"] == outputs["contiguous"], generated, int(trace.output_tokens[served].sum()),
                      extra.swaps, extra.recomputes, model.decode_kernel, name)
