"""Scenario → the objects of one simulation: request table, allocator, scheduler, cost model.

Applies the engine's limits to the request stream (prompts over max_model_len rejected or
clipped, outputs stopped at max_model_len) and checks that the scenario can run at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from typing import TYPE_CHECKING

from simkv import compiled
from simkv.cost.select import CostInputs, make_cost
from simkv.features.model_checks import (check_lora, check_moe_engine, check_speculative, draft_memory, lora_gpu_bytes, lora_parts,
                                speculative_parts)
from simkv.features import frontend
from simkv.errors import ScenarioDoesNotFit, SimkvError
from simkv.kv.base import KVAllocator
from simkv.kv.buddy import BuddyAllocator
from simkv.kv.contiguous import ContiguousAllocator
from simkv.kv.paged import PagedAllocator
from simkv.kv.compiled_prefix_cache import prefix_cache_allocator
from simkv.metrics.compiled_recorder import recorder_kernels
from simkv.kv.reservation import largest_reservation, reservation_tokens
from simkv.kv.memory import MemoryPlan, plan_memory
from simkv.features.offload_setup import check_offload, configure_cost, offload_allocator, resolve_offload
from simkv.request import PROMPT_OVER_PREFILL_BUDGET, REJECTED, RequestTable
from simkv.presets import Target, apply_preset, preset_target, resolve_engine  # noqa: F401 (re-exported)
from simkv.cost.block_size import PER_TOKEN_GATHER_SCHEDULERS, decode_attention_factor
from simkv.sched import SCHEDULERS, Scheduler
from simkv.sched.chunked import dense_block_ids
from simkv.workload.stream import RequestStream

if TYPE_CHECKING:  # the schema is an input: the core never imports it at run time
    from simkv.scenario import Engine, Scenario


@dataclass(frozen=True)
class EngineLimits:
    """Resolved engine limits (defaults filled in)."""

    max_model_len: int
    max_num_batched_tokens: int
    max_num_seqs: int


@dataclass
class Simulation:
    """Everything one run needs, built from a scenario and a request stream."""

    scenario: Scenario
    table: RequestTable
    allocator: KVAllocator
    scheduler: Scheduler
    cost: object
    memory: MemoryPlan
    limits: EngineLimits
    measure_start_s: float
    measure_end_s: float
    num_outputs_truncated: int
    cost_name: str = "roofline"
    engine: Engine | None = None   # the engine with its preset applied
    compiled_recorder: bool = False   # the recorder on its compiled kernel, where it pays (simkv.compiled)


WHOLE_PROMPT_SCHEDULERS = ("fcfs", "prefill-first", "static")


def resolve_limits(scenario: Scenario, e: Engine) -> EngineLimits:
    """Fill engine defaults and check them against the model."""
    model = scenario.model_spec()
    max_len = e.max_model_len or model.max_position_embeddings
    if max_len > model.max_position_embeddings:
        raise SimkvError(f"max_model_len {max_len} exceeds the model's {model.max_position_embeddings}-token context",
                         field="engine.max_model_len", fix=f"set it to at most {model.max_position_embeddings}")
    batched = e.max_num_batched_tokens or max(max_len, 2048)
    if batched < max_len and e.scheduler in WHOLE_PROMPT_SCHEDULERS:
        raise SimkvError(f"max_num_batched_tokens {batched} is below max_model_len {max_len}: without chunked "
                         "prefill a long prompt could never be scheduled",
                         field="engine.max_num_batched_tokens", fix=f"set it to at least {max_len}, or lower engine.max_model_len")
    if e.scheduler == "sglang" and batched < e.block_size:
        raise SimkvError(f"max_num_batched_tokens {batched} is below one page ({e.block_size} tokens): SGLang aligns "
                         "prefill chunks to pages, so no prompt could ever be prefilled",
                         field="engine.max_num_batched_tokens", fix=f"set it to at least {e.block_size}")
    return EngineLimits(max_len, batched, e.max_num_seqs)


def build(scenario: Scenario, stream: RequestStream, inputs: CostInputs) -> Simulation:
    """Wire up one simulation of `scenario` over `stream`, with the measurements its step-time
    model needs (`inputs`: the GPU's fitted calibration, MoE GEMMs, a user step table), which
    the run driver resolves from files (`simkv.simulate.cost_inputs`)."""
    model, gpu, e = scenario.model_spec(), scenario.gpu_spec(), resolve_engine(scenario)
    tp = scenario.hardware.tensor_parallel
    try:
        model.shard(tp)
    except ValueError as err:
        raise SimkvError(str(err), field="hardware.tensor_parallel", fix="use a degree that divides the head counts") from None
    limits = resolve_limits(scenario, e)
    _check_policy(e)
    check_offload(e)
    if e.weight_dtype == "fp8" and gpu.fp8_tflops is None:
        raise SimkvError(f"{gpu.description} has no fp8 tensor cores", field="engine.weight_dtype", fix="use bf16")
    check_moe_engine(model, e, tp)
    draft = check_speculative(scenario, model, e, tp)
    check_lora(scenario, e)
    mem = plan_memory(model, gpu, tensor_parallel=tp, gpu_memory_utilization=e.gpu_memory_utilization,
                      weight_dtype=e.weight_dtype, kv_dtype=e.kv_cache_dtype, block_size=e.block_size,
                      max_num_batched_tokens=limits.max_num_batched_tokens, max_num_seqs=limits.max_num_seqs,
                      activation_reserve_gib=e.activation_reserve_gib, num_gpu_blocks=e.num_gpu_blocks,
                      **draft_memory(draft, e, tp, lora_gpu_bytes(scenario, model, e, tp)))
    if mem.capacity_tokens < limits.max_model_len:
        raise ScenarioDoesNotFit(
            f"the KV cache holds {mem.capacity_tokens} tokens ({mem.kv_bytes / 2**30:.2f} GiB), fewer than one "
            f"max_model_len request ({limits.max_model_len} tokens)", field="engine.max_model_len",
            fix=f"lower engine.max_model_len to {mem.capacity_tokens} or less, raise gpu_memory_utilization, "
                "or add tensor parallelism")
    table, truncated = _request_table(stream, limits.max_model_len, scenario.workload.overlong)
    table.clients = stream.clients
    table.frontend_s = frontend.per_request_s(frontend.resolve(scenario.frontend, e.preset), table.prompt_tokens)
    if e.speculative is not None and (e.reserve_upfront or e.allocator == "contiguous"):
        # reserved caches hold the k speculative slots too (TGI: max_new_tokens + speculate)
        table.max_new_tokens = np.minimum(table.max_new_tokens + e.speculative.num_tokens,
                                          limits.max_model_len - table.prompt_tokens)
    beams = scenario.workload.sampling.beam_width > 1
    reserving = reserves_upfront(e)
    if beams and reserving:
        raise SimkvError("beam search is not modelled for an engine that reserves at admission (tgi, trtllm "
                         "GUARANTEED_NO_EVICT)",
                         field="workload.sampling.beam_width", fix="use another preset, or parallel sampling (n)")
    if e.allocator == "paged" and (e.prefix_caching or beams):  # reference-counted blocks
        allocator = prefix_cache_allocator(mem.num_blocks, e.block_size, table.num_requests)
        if e.kv_offload is not None:   # host / SSD tiers below the prefix cache (simkv.kv.offload)
            e = resolve_offload(e, mem.kv_bytes)
            allocator = offload_allocator(e, mem, gpu, model.kv_bytes_per_token(e.kv_cache_dtype, tp), table.num_requests)
        if reserving:  # TGI's radix allocator: cached prefix blocks + the rest of the reservation
            allocator.reserve_upfront = True
            _reject_unplaceable(table, "prompt_plus_max_new", limits.max_model_len, allocator)
    elif e.allocator == "paged":
        allocator = PagedAllocator(mem.num_blocks, e.block_size, reserve_upfront=reserving)
        if reserving:
            _reject_unplaceable(table, "prompt_plus_max_new", limits.max_model_len, allocator)
    else:
        allocator = (BuddyAllocator(mem.capacity_tokens) if e.placement == "buddy"
                     else ContiguousAllocator(mem.capacity_tokens, e.placement))
        _reject_unplaceable(table, e.reservation, limits.max_model_len, allocator)
    if e.scheduler in ("tgi", "trtllm") and not e.prefill_chunking:  # without chunking a prompt must fit one step
        budget = e.max_batch_prefill_tokens if e.scheduler == "tgi" else limits.max_num_batched_tokens
        over = (table.prompt_tokens > budget) & (table.reject_reason == 0)
        table.reject_reason[over] = PROMPT_OVER_PREFILL_BUDGET
        table.status[over] = REJECTED
    kv_per_token = model.kv_bytes_per_token(e.kv_cache_dtype, tp)
    table.beam_reselect = scenario.workload.sampling.beam_reselect or 0.0
    scheduler = make_scheduler(e, table, allocator, limits, mem, scenario.run.warmup_s, kv_per_token)
    scheduler.batch.rng = np.random.default_rng(np.random.SeedSequence([scenario.run.seed, 7]))
    # a step never computes more tokens than the cache holds (Orca's step has no token budget)
    step_tokens = min(max(limits.max_num_batched_tokens, e.max_batch_prefill_tokens), mem.capacity_tokens + limits.max_num_seqs)
    cost, cost_name = make_cost(scenario, inputs, max(step_tokens, 16384))
    if e.allocator == "paged":   # the paged kernel's block-size term (1.0 at block 16 and above)
        cost.decode_attention_scale = decode_attention_factor(e.block_size, e.scheduler in PER_TOKEN_GATHER_SCHEDULERS)
    configure_cost(cost, e, gpu)
    # decided before the attention sums: a run long enough for the recorder's kernel has numba loaded
    rec_compiled = (compiled.wanted(table.num_requests, compiled.RECORDER_FROM_REQUESTS)
                    and recorder_kernels() is not None)
    if hasattr(cost, "use_compiled_attention") and compiled.wanted(table.num_requests, pays_alone_from=None):
        # the same numbers, sooner, where numba is loaded anyway (simkv.compiled)
        cost.use_compiled_attention(compiled.kernels("simkv.cost.attention_kernels"))
    if e.speculative is not None:
        scheduler, cost = speculative_parts(scenario, e, scheduler, cost, draft, max(step_tokens, 16384), inputs)
    if e.lora is not None and scenario.workload.lora is not None:
        scheduler, cost = lora_parts(scenario, model, gpu, e, tp, table, scheduler, cost)
    start, end = _measured_window(scenario, stream)
    return Simulation(scenario, table, allocator, scheduler, cost, mem, limits, start, end, truncated, cost_name, e,
                      rec_compiled)


def reserves_upfront(e: Engine) -> bool:
    """Does the engine take the blocks for prompt + max_new_tokens at admission (TGI, TensorRT-LLM's
    GUARANTEED_NO_EVICT)?"""
    return e.reserve_upfront or (e.scheduler == "trtllm" and e.capacity_scheduler_policy == "guaranteed_no_evict")


def _check_policy(e: Engine) -> None:
    policy = SCHEDULERS[e.scheduler]
    if policy.needs == "paged" and e.allocator != "paged":
        raise SimkvError(f"the {e.scheduler} scheduler works on a paged KV cache", field="engine.allocator",
                         fix="set engine.allocator: paged, or use scheduler fcfs/static for contiguous memory")
    if policy.needs == "contiguous" and e.allocator == "paged":
        raise SimkvError(f"the {e.scheduler} scheduler (FasterTransformer) never preempts, so a batch growing into blocks taken "
                         "on demand could run out of memory mid-batch", field="engine.allocator",
                         fix="set engine.allocator: contiguous (the fastertransformer preset does)")
    if e.scheduler == "tgi" and not e.reserve_upfront:
        raise SimkvError("the tgi scheduler reserves prompt + max_new_tokens at admission", field="engine.reserve_upfront",
                         fix="set engine.reserve_upfront: true (the tgi preset does)")
    if e.reserve_upfront and e.scheduler != "tgi":
        raise SimkvError("up-front reservation is modelled for the tgi scheduler only", field="engine.reserve_upfront",
                         fix="remove it, or use engine.scheduler: tgi")
    if e.prefix_caching and (not policy.supports_prefix_caching or e.allocator != "paged"):
        raise SimkvError("prefix caching is modelled for the chunked (vLLM v1), tgi, sglang and trtllm schedulers "
                         "on a paged cache", field="engine.prefix_caching",
                         fix="use engine.preset: vllm-v1, tgi, sglang or trtllm, or remove it")
    if e.preemption in ("swap", "auto") and e.scheduler != "prefill-first":
        raise SimkvError(f"{e.preemption} preemption is modelled for the prefill-first (vLLM v0) scheduler only",
                         field="engine.preemption", fix="use recompute, or engine.preset: vllm-v0")
    if e.prefill_chunking and e.scheduler not in ("tgi", "trtllm"):
        raise SimkvError("prefill_chunking is the tgi and trtllm schedulers' switch (the chunked and sglang "
                         "schedulers always chunk)", field="engine.prefill_chunking",
                         fix="remove it, or use engine.scheduler: tgi or trtllm")


def make_scheduler(e: Engine, table: RequestTable, allocator: KVAllocator, limits: EngineLimits, mem: MemoryPlan,
                   warmup_s: float, kv_bytes_per_token: int) -> Scheduler:
    """The batching policy the (preset-resolved) engine names, from the registry."""
    return SCHEDULERS[e.scheduler].from_engine(e, table, allocator, limits, mem, warmup_s, kv_bytes_per_token)


def _request_table(stream: RequestStream, max_len: int, overlong: str) -> tuple[RequestTable, int]:
    prompt = stream.prompt_tokens.copy()
    too_long = prompt > max_len - 1
    reason = np.zeros(stream.num_requests, dtype=np.int8)
    if overlong == "reject":
        reason[too_long] = 1
    prompt = np.minimum(prompt, max_len - 1)
    room = max_len - prompt
    output = np.minimum(stream.output_tokens, room)
    truncated = int(np.count_nonzero((output < stream.output_tokens) & (reason == 0)))
    max_new = np.maximum(np.minimum(stream.max_new_tokens, room), output)
    prefix_tokens = None if stream.prefix_tokens is None else np.minimum(stream.prefix_tokens, prompt)
    # a copy: the engine writes the arrival of each session's later turn, and variants share the stream
    table = RequestTable(stream.arrival_s.copy(), prompt, output, max_new, reason, stream.prefix_id, prefix_tokens, stream.group)
    table.trace_blocks, table.trace_block_tokens = dense_block_ids(stream.block_ids), stream.block_tokens
    table.class_id = stream.class_id
    table.session, table.next_turn, table.think_s = stream.session, stream.next_turn, stream.think_s
    return table, truncated


def _reject_unplaceable(table: RequestTable, policy: str, max_len: int, allocator) -> None:
    """A request whose reservation the empty cache cannot place can never run."""
    if allocator.can_allocate(0, largest_reservation(policy, max_len)):
        return
    for rid in np.flatnonzero(table.reject_reason == 0).tolist():
        size = reservation_tokens(policy, prompt_tokens=int(table.prompt_tokens[rid]),
                                  final_tokens=int(table.final_kv_tokens[rid]),
                                  max_new_tokens=int(table.max_new_tokens[rid]), max_model_len=max_len)
        if not allocator.can_allocate(0, size):
            table.reject_reason[rid] = 2
            table.status[rid] = 2


def _measured_window(scenario: Scenario, stream: RequestStream) -> tuple[float, float]:
    run = scenario.run
    if stream.clients is not None and stream.num_requests:  # closed loop: the window closes with the last send
        return (np.inf if run.warmup_requests else run.warmup_s), np.inf
    if stream.num_requests == 0:
        raise SimkvError(f"the workload produced no requests in {run.duration_s} s", field="run.duration_s",
                         fix="lengthen run.duration_s or raise workload.arrival.rate")
    end = run.duration_s if run.duration_s is not None else float(np.nanmax(stream.arrival_s))
    if run.warmup_s >= end:
        raise SimkvError(f"warmup_s ({run.warmup_s} s) leaves nothing to measure: the last request arrives at "
                         f"{end:.1f} s", field="run.warmup_s", fix="lower run.warmup_s or add requests")
    return run.warmup_s, end
