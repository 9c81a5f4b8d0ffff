"""Engine presets: the policies and defaults of real serving engines, as data with sources.

A preset fills every engine field the scenario leaves unset; fields the scenario sets win.
Some real defaults depend on the hardware or the model (vLLM's batch limits on the GPU's memory
and name, TGI's prefill budget on the card's flops and the model's size, Orca's step size on
max_model_len): those are computed by the preset's `resolve` function from a `Target`, at build
time (`apply_preset(engine, target)`); without a target only the fixed defaults apply.
Every default names the engine version and file it comes from (see docs/engines.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from typing import TYPE_CHECKING

from simkv.specs import GIB, GpuSpec, ModelSpec

if TYPE_CHECKING:  # the schema is an input here: no runtime import (the core reaches no catalog file)
    from simkv.scenario import Engine, Scenario


@dataclass(frozen=True)
class Target:
    """What the hardware/model-dependent defaults are computed from."""

    gpu: GpuSpec
    gpu_name: str | None        # the catalog key (e.g. "a100-80gb"), None for an inline GPU
    model: ModelSpec
    tensor_parallel: int = 1

    @property
    def card_name(self) -> str:
        """Lower-case card name as the engines see it (catalog key and description)."""
        return f"{self.gpu_name or ''} {self.gpu.description}".lower()


def _max_len(engine: Engine, target: Target) -> int:
    return engine.max_model_len or target.model.max_position_embeddings


# ---------------------------------------------------------------- vLLM V1
VLLM_V1_SOURCE = "vLLM V1 (v0.11, vllm/engine/arg_utils.py EngineArgs.get_batch_defaults)"


def vllm_batch_defaults(target: Target) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM's `get_batch_defaults` picks for the OpenAI API
    server (UsageContext.OPENAI_API_SERVER, what `vllm serve` runs; the offline LLM class gets
    16384/1024 and 8192/256 instead): GPUs with at least 70 GiB of device memory that are not A100s
    8192 and 1024, every other GPU (and every A100, PR #17885) 2048 and 256."""
    large = target.gpu.memory_bytes >= 70 * GIB and "a100" not in target.card_name
    return (8192, 1024) if large else (2048, 256)


def _resolve_vllm_v1(engine: Engine, target: Target, explicit: set) -> dict:
    batched, seqs = vllm_batch_defaults(target)
    seqs = engine.max_num_seqs if "max_num_seqs" in explicit else seqs
    # _set_default_max_num_seqs_and_batched_tokens_args: a default budget never exceeds
    # max_num_seqs x max_model_len, and a default max_num_seqs never exceeds the budget
    if "max_num_batched_tokens" not in explicit:
        batched = min(batched, seqs * _max_len(engine, target))
    else:
        batched = engine.max_num_batched_tokens
    return {"max_num_batched_tokens": batched, "max_num_seqs": min(seqs, batched)}


# ---------------------------------------------------------------- TGI v3
# launcher/src/main.rs ComputeType::f16_flop (dense f16 FLOP/s per card, TGI's own table)
TGI_CARD_F16_FLOPS = {"4090": 82e12, "t4": 65e12, "l4": 121e12, "l40": 181e12, "l40s": 363e12, "a10g": 125e12,
                      "a40": 149e12, "a100": 312e12, "h100": 900e12, "h200": 989e12}


def tgi_card_flops(target: Target) -> float | None:
    """The f16 FLOP/s TGI's launcher assumes for the card (None: a card it does not know)."""
    words = re.split(r"[\s_-]+", target.card_name)
    return next((TGI_CARD_F16_FLOPS[w] for w in words if w in TGI_CARD_F16_FLOPS), None)


def tgi_max_batch_prefill_tokens(target: Target) -> int:
    """TGI 3.3.7's default max_batch_prefill_tokens (launcher/src/main.rs, `main`): the
    compute-optimal step size (card f16 FLOP/s x shards / the model's FLOPs per token, ignored
    when <= 100; 4096 for an unknown card), capped at max_position_embeddings and at the tokens
    whose KV and MLP activations fit the VRAM left after the weights (`vram_maximum`, with
    cuda_memory_fraction 1.0 and wiggle room 0.95)."""
    m, tp = target.model, target.tensor_parallel
    value = 4096
    flops = tgi_card_flops(target)
    if flops is not None:
        attn = 2 * m.head_dim * m.hidden_size * (4 * m.num_heads + 2 * m.num_kv_heads)   # q, k, v, attn, o
        per_token = (attn + 2 * 3 * m.hidden_size * m.intermediate_size) * m.num_layers   # Config::flop
        optimal = int(flops * tp / per_token)
        if optimal > 100:
            value = optimal
    value = min(value, m.max_position_embeddings)
    # vram_maximum: nvidia-smi memory.total x shards x 1.0 x 0.95, minus bf16 weights, per token KV + MLP
    available = int(target.gpu.memory_bytes * tp * 0.95)
    weights = 2 * ((m.num_heads + 2 * m.num_kv_heads) * m.head_dim + m.num_heads * m.head_dim * m.hidden_size
                   + 3 * m.intermediate_size * m.hidden_size) * m.num_layers + 2 * 2 * m.hidden_size * m.vocab_size
    per_token_vram = m.num_kv_heads * 2 * m.head_dim * 2 * m.num_layers + (m.intermediate_size * 3 // 2) * 2 * 3
    if available > weights:
        value = min(value, (available - weights) // per_token_vram)
    return int(value)


def _resolve_tgi(engine: Engine, target: Target, explicit: set) -> dict:
    return {"max_batch_prefill_tokens": tgi_max_batch_prefill_tokens(target)}


# ---------------------------------------------------------------- Orca
def _resolve_orca(engine: Engine, target: Target, explicit: set) -> dict:
    """Orca batches whole requests up to the batch size, with no prefill token budget: a step may
    hold max_num_seqs prompts of max_model_len (sarathi-serve sarathi/config/config.py
    OrcaSchedulerConfig.get_max_num_batched_tokens)."""
    return {"max_num_batched_tokens": engine.max_num_seqs * _max_len(engine, target)}


# ---------------------------------------------------------------- SGLang (v0.5)
SGLANG_SOURCE = "SGLang v0.5 (python/sglang/srt/server_args.py ServerArgs._handle_gpu_memory_settings)"


def sglang_memory_defaults(target: Target) -> tuple[int, float]:
    """(chunked_prefill_size, mem_fraction_static) SGLang picks from the card's memory (MiB, as
    get_device_memory_capacity reports it) and the tensor-parallel size: chunks of 2048 below 35 GB,
    4096 below 60 GB, 8192 below 160 GB (H100, H200), else 16384; the static fraction is what is left
    after `reserved_mem` = 512 + 1.5 x max(chunk, 2048) + 2 x cuda_graph_max_bs + tp x 1024 / 8 MiB
    (at least 10 GiB on cards over 60 GB), rounded to 3 decimals."""
    mib = target.gpu.memory_bytes / 2**20
    tp = target.tensor_parallel
    if mib < 35 * 1024:
        chunk, graph_bs = 2048, (24 if tp < 4 else 80)
    elif mib < 60 * 1024:
        chunk, graph_bs = 4096, (32 if tp < 4 else 160)
    elif mib < 160 * 1024:
        chunk, graph_bs = 8192, (256 if tp < 4 else 512)
    else:
        chunk, graph_bs = 16384, 512
    reserved = 512 + max(chunk, 2048) * 1.5 + graph_bs * 2 + tp * 1024 / 8
    if mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return chunk, round((mib - reserved) / mib, 3)


def sglang_max_running_requests(total_tokens: int, context_len: int) -> int:
    """SGLang's default max_running_requests: min(max_total_num_tokens // 2, req_to_token_pool size),
    the pool holding min(max(total / context_len x 512, 2048), 4096) requests
    (managers/scheduler.py, model_executor/model_runner.py init_memory_pool)."""
    pool = min(max(int(total_tokens / context_len * 512), 2048), 4096)
    return max(1, min(total_tokens // 2, pool))


def _resolve_sglang(engine: Engine, target: Target, explicit: set) -> dict:
    from simkv.kv.memory import plan_memory   # the KV pool decides max_running_requests
    chunk, fraction = sglang_memory_defaults(target)
    out = {"max_num_batched_tokens": chunk, "gpu_memory_utilization": fraction}
    if "max_num_seqs" not in explicit:
        util = engine.gpu_memory_utilization if "gpu_memory_utilization" in explicit else fraction
        try:
            mem = plan_memory(target.model, target.gpu, tensor_parallel=target.tensor_parallel,
                              gpu_memory_utilization=util, weight_dtype=engine.weight_dtype,
                              kv_dtype=engine.kv_cache_dtype, block_size=engine.block_size,
                              max_num_batched_tokens=chunk, max_num_seqs=1,
                              activation_reserve_gib=engine.activation_reserve_gib, num_gpu_blocks=engine.num_gpu_blocks)
        except Exception:   # the model does not fit: build() says so with its own message
            return out
        out["max_num_seqs"] = sglang_max_running_requests(mem.capacity_tokens, _max_len(engine, target))
    return out


# ---------------------------------------------------------------- TensorRT-LLM (1.1)
TRTLLM_FREE_GPU_MEMORY_FRACTION = 0.9   # tensorrt_llm/llmapi/llm_args.py KvCacheConfig.free_gpu_memory_fraction


def _resolve_trtllm(engine: Engine, target: Target, explicit: set) -> dict:
    """KvCacheConfig.free_gpu_memory_fraction = 0.9 is a fraction of the memory left free after the
    weights and the activations are in place; simkv's gpu_memory_utilization is a fraction of the
    whole card, so the same KV pool is (weights + activations + 0.9 x the rest) / card memory."""
    if "gpu_memory_utilization" in explicit:
        return {}
    from simkv.kv.memory import estimate_activation_bytes
    m, gpu, tp = target.model, target.gpu, target.tensor_parallel
    weights = m.weight_bytes_per_gpu(engine.weight_dtype, tp)
    acts = (engine.activation_reserve_gib * GIB if engine.activation_reserve_gib is not None else
            estimate_activation_bytes(m, tp, engine.max_num_batched_tokens or 8192, engine.max_num_seqs))
    rest = gpu.memory_bytes - weights - acts
    if rest <= 0:
        return {}
    util = (weights + acts + TRTLLM_FREE_GPU_MEMORY_FRACTION * rest) / gpu.memory_bytes
    return {"gpu_memory_utilization": min(1.0, util)}


PRESETS: dict[str, dict] = {
    "simkv": {
        "source": "simkv's core policy: FCFS iteration-level batching, whole prompts mixed with decodes",
        "defaults": {"scheduler": "fcfs"},
        "sources": {},
    },
    "vllm-v1": {
        "source": "vLLM V1 engine (v0.11: vllm/v1/core/sched/scheduler.py, kv_cache_manager.py; defaults from "
                  "vllm/engine/arg_utils.py and vllm/config): token budget and max_num_seqs by GPU "
                  "(OpenAI server: 8192/1024 on >= 70 GiB non-A100 GPUs, else 2048/256), chunked prefill and "
                  "automatic prefix caching on, block size 16, gpu_memory_utilization 0.9, recompute preemption "
                  "of the last running request",
        "defaults": {"scheduler": "chunked", "allocator": "paged", "block_size": 16, "gpu_memory_utilization": 0.9,
                     "preemption": "recompute", "watermark": 0.0, "prefix_caching": True},
        "resolve": _resolve_vllm_v1,
        "sources": {
            "scheduler": "vllm/engine/arg_utils.py _set_default_chunked_prefill_and_prefix_caching_args "
                         "(enable_chunked_prefill defaults to the model's support: on)",
            "prefix_caching": "vllm/engine/arg_utils.py _set_default_chunked_prefill_and_prefix_caching_args",
            "block_size": "vllm/config/cache.py CacheConfig (16 on CUDA)",
            "gpu_memory_utilization": "vllm/config/cache.py CacheConfig.gpu_memory_utilization = 0.9",
            "max_num_batched_tokens": VLLM_V1_SOURCE + ", OPENAI_API_SERVER: 8192 (>= 70 GiB, not A100) / 2048",
            "max_num_seqs": VLLM_V1_SOURCE + ", OPENAI_API_SERVER: 1024 (>= 70 GiB, not A100) / 256",
            "preemption": "vllm/v1/core/sched/scheduler.py (preempts the last running request, recompute)",
        },
    },
    "vllm-v0": {
        "source": "vLLM V0 scheduler (v0.6, vllm/core/scheduler.py _schedule_default): prefill-prioritised steps, "
                  "watermark 0.01, block size 16, swap_space 4 GiB, preemption by recompute for single-sequence "
                  "groups and by swap for groups of several sequences (_preempt)",
        "defaults": {"scheduler": "prefill-first", "allocator": "paged", "block_size": 16,
                     "gpu_memory_utilization": 0.9, "max_num_seqs": 256, "watermark": 0.01, "preemption": "auto",
                     "swap_space_gib": 4.0},
        "sources": {
            "scheduler": "vllm/core/scheduler.py _schedule_default (chunked prefill off by default in V0)",
            "max_num_batched_tokens": "vllm/config.py SchedulerConfig: max(max_model_len, 2048) without chunked "
                                      "prefill (simkv's default)",
            "max_num_seqs": "vllm/engine/arg_utils.py EngineArgs.max_num_seqs = 256",
            "watermark": "vllm/core/block_manager.py SelfAttnBlockSpaceManager(watermark=0.01)",
            "swap_space_gib": "vllm/engine/arg_utils.py EngineArgs.swap_space = 4 (GiB)",
            "preemption": "vllm/core/scheduler.py _preempt: preemption_mode None -> RECOMPUTE if "
                          "get_max_num_running_seqs() == 1 else SWAP",
            "gpu_memory_utilization": "vllm/engine/arg_utils.py EngineArgs.gpu_memory_utilization = 0.9",
        },
    },
    "tgi": {
        "source": "text-generation-inference 3.3.7 (backends/v3, launcher/src/main.rs): paged blocks reserved for "
                  "prompt + max_new_tokens - 1 at admission, no preemption, prefill chunking and prefix caching on "
                  "(flashinfer attention), max_batch_prefill_tokens from the card's flops and the model, "
                  "waiting_served_ratio 0.3 and max_waiting_tokens 20 (used without chunking only), "
                  "max_concurrent_requests 128",
        "defaults": {"scheduler": "tgi", "allocator": "paged", "block_size": 16, "reserve_upfront": True,
                     "gpu_memory_utilization": 0.9, "waiting_served_ratio": 0.3, "prefill_chunking": True,
                     "prefix_caching": True, "max_waiting_tokens": 20, "max_concurrent_requests": 128,
                     "max_num_seqs": 1024},
        "resolve": _resolve_tgi,
        "sources": {
            "reserve_upfront": "backends/v3/src/queue.rs next_batch: block_allocator.allocate(input_length + "
                               "max_new_tokens + speculate - 1)",
            "prefill_chunking": "server/text_generation_server/models/globals.py PREFILL_CHUNKING default '1'; "
                                "backends/v3/src/backend.rs batching_task (support_chunking)",
            "prefix_caching": "launcher/src/main.rs resolve_attention: PREFIX_CACHING defaults to 'true'",
            "max_batch_prefill_tokens": "launcher/src/main.rs main: min(compute_optimal or 4096, "
                                        "max_position_embeddings, vram_maximum)",
            "waiting_served_ratio": "launcher/src/main.rs Args default 0.3",
            "max_waiting_tokens": "launcher/src/main.rs Args default 20",
            "max_concurrent_requests": "launcher/src/main.rs Args default 128",
            "block_size": "simkv keeps 16 (TGI: 1 under flashinfer, globals.py BLOCK_SIZE) - not modelled",
        },
    },
    "orca-max": {
        "source": "Orca (OSDI'22) as modelled in the PagedAttention paper (SOSP'23 Fig. 2): iteration-level "
                  "batching of whole requests (no prefill token budget), a buddy allocator, contiguous "
                  "reservation of the maximum sequence length",
        "defaults": {"scheduler": "fcfs", "allocator": "contiguous", "reservation": "max_model_len",
                     "placement": "buddy"},
        "resolve": _resolve_orca,
        "sources": {"max_num_batched_tokens": "sarathi-serve sarathi/config/config.py OrcaSchedulerConfig: "
                                              "max_num_seqs x max_model_len",
                    "placement": "PagedAttention paper §6.1: Orca uses the buddy allocation algorithm"},
    },
    "orca-pow2": {
        "source": "Orca-Pow2 (PagedAttention paper §6.1): the prompt plus the next power of two of the output "
                  "length (outputs over-reserved by at most 2x), placed by the buddy allocator; no prefill token budget",
        "defaults": {"scheduler": "fcfs", "allocator": "contiguous", "reservation": "pow2", "placement": "buddy"},
        "resolve": _resolve_orca,
        "sources": {"max_num_batched_tokens": "sarathi-serve sarathi/config/config.py OrcaSchedulerConfig",
                    "placement": "PagedAttention paper §6.1 (buddy allocation)"},
    },
    "orca-oracle": {
        "source": "Orca-Oracle (PagedAttention paper §6.1): a reservation of exactly the final length (the true "
                  "output length known), placed by the buddy allocator; no prefill token budget",
        "defaults": {"scheduler": "fcfs", "allocator": "contiguous", "reservation": "oracle",
                     "placement": "buddy"},
        "resolve": _resolve_orca,
        "sources": {"max_num_batched_tokens": "sarathi-serve sarathi/config/config.py OrcaSchedulerConfig",
                    "placement": "PagedAttention paper §6.1: the buddy allocation algorithm, as for every Orca"},
    },
    "fastertransformer": {
        "source": "NVIDIA FasterTransformer: static request-level batches, contiguous max-length KV buffers; "
                  "the whole batch is prefilled in one pass (budget 65,536 prompt tokens)",
        "defaults": {"scheduler": "static", "allocator": "contiguous", "reservation": "max_model_len",
                     "max_num_batched_tokens": 65536},
        "sources": {},
    },
    "sarathi-serve": {
        "source": "Sarathi-Serve (OSDI'24; microsoft/sarathi-serve sarathi/config/config.py, "
                  "core/block_space_manager): stall-free batching, chunked prefill with a token budget of 512, "
                  "watermark 0.01, max_num_seqs 128, gpu_memory_utilization 0.8",
        "defaults": {"scheduler": "chunked", "allocator": "paged", "block_size": 16, "max_num_batched_tokens": 512,
                     "max_num_seqs": 128, "preemption": "recompute", "watermark": 0.01,
                     "gpu_memory_utilization": 0.8},
        "sources": {
            "max_num_batched_tokens": "sarathi/config/config.py SarathiSchedulerConfig.chunk_size = 512",
            "max_num_seqs": "sarathi/config/config.py BaseSchedulerConfig.max_num_seqs = 128",
            "block_size": "sarathi/config/config.py CacheConfig.block_size = 16",
            "watermark": "sarathi/core/block_space_manager/base_block_space_manager.py watermark = 0.01 "
                         "(SarathiBlockSpaceManager inherits it)",
            "gpu_memory_utilization": "sarathi/config/config.py WorkerConfig.gpu_memory_utilization = 0.8",
        },
    },
}


PRESETS["sglang"] = {
    "source": "SGLang v0.5 (python/sglang/srt/managers/scheduler.py, schedule_policy.py, schedule_batch.py, "
              "mem_cache/radix_cache.py; defaults from server_args.py and environ.py): RadixAttention prefix "
              "cache with page size 1 and LRU eviction of leaves, prefill batches run alone (mixed chunks off), "
              "chunked prefill of 8192 tokens on 35-160 GB cards, max_prefill_tokens 16384, schedule policy fcfs "
              "(lpm: longest prefix match, FCFS above 128 waiting), new-token ratio 0.7 decaying to 0.098 over "
              "600 decode steps, retraction with 20 decode steps of headroom, mem_fraction_static from the card",
    "defaults": {"scheduler": "sglang", "allocator": "paged", "block_size": 1, "prefix_caching": True,
                 "schedule_policy": "fcfs", "schedule_conservativeness": 1.0, "gpu_memory_utilization": 0.88,
                 "activation_reserve_gib": 0.0, "max_num_batched_tokens": 8192, "max_num_seqs": 4096,
                 "preemption": "recompute"},
    "resolve": _resolve_sglang,
    "sources": {
        "block_size": "server_args.py ServerArgs.page_size = 1 (None resolves to 1 for the default backends)",
        "prefix_caching": "server_args.py ServerArgs.disable_radix_cache = False",
        "schedule_policy": "server_args.py ServerArgs.schedule_policy = 'fcfs' (lpm: schedule_policy.py "
                           "CacheAwarePolicy.LPM, FCFS when len(waiting_queue) > 128)",
        "schedule_conservativeness": "server_args.py ServerArgs.schedule_conservativeness = 1.0",
        "max_num_batched_tokens": SGLANG_SOURCE + ": chunked_prefill_size 2048 (< 35 GB) / 4096 (< 60 GB) / "
                                  "8192 (< 160 GB) / 16384",
        "gpu_memory_utilization": SGLANG_SOURCE + ": mem_fraction_static = (memory - reserved_mem) / memory "
                                  "(0.88 without a target)",
        "activation_reserve_gib": "mem_fraction_static already leaves reserved_mem outside the weights + KV pool",
        "max_num_seqs": "managers/scheduler.py max_running_requests = min(max_total_num_tokens // 2, "
                        "req_to_token_pool size); model_runner.py pool = min(max(tokens / context_len x 512, "
                        "2048), 4096) (4096 without a target)",
        "max_prefill_tokens": "server_args.py ServerArgs.max_prefill_tokens = 16384 (fixed in simkv/sched/sglang.py)",
        "new_token_ratio": "environ.py SGLANG_INIT_NEW_TOKEN_RATIO 0.7, SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR 0.14, "
                           "SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS 600, SGLANG_RETRACT_DECODE_STEPS 20, "
                           "SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION 4096",
    },
}
PRESETS["trtllm"] = {
    "source": "TensorRT-LLM 1.1 (cpp/tensorrt_llm/batch_manager/capacityScheduler.cpp, microBatchScheduler.cpp; "
              "defaults from tensorrt_llm/llmapi/llm_args.py): in-flight batching of whole prompts with decodes "
              "within max_num_tokens 8192 and max_batch_size 2048, capacity scheduler GUARANTEED_NO_EVICT "
              "(blocks for prompt + max_new_tokens reserved at admission, never preempts; MAX_UTILIZATION "
              "admits by current need and pauses the newest), 32 tokens per KV block, block reuse on, chunked "
              "context off, free_gpu_memory_fraction 0.9",
    "defaults": {"scheduler": "trtllm", "allocator": "paged", "block_size": 32, "prefix_caching": True,
                 "capacity_scheduler_policy": "guaranteed_no_evict", "max_num_batched_tokens": 8192,
                 "max_num_seqs": 2048, "prefill_chunking": False, "gpu_memory_utilization": 0.9,
                 "preemption": "recompute"},
    "resolve": _resolve_trtllm,
    "sources": {
        "capacity_scheduler_policy": "llm_args.py SchedulerConfig.capacity_scheduler_policy = GUARANTEED_NO_EVICT",
        "block_size": "llm_args.py KvCacheConfig.tokens_per_block = 32",
        "prefix_caching": "llm_args.py KvCacheConfig.enable_block_reuse = True",
        "max_num_batched_tokens": "llm_args.py BaseLlmArgs.max_num_tokens = 8192",
        "max_num_seqs": "llm_args.py BaseLlmArgs.max_batch_size = 2048",
        "prefill_chunking": "llm_args.py BaseLlmArgs.enable_chunked_prefill = False",
        "gpu_memory_utilization": "llm_args.py KvCacheConfig.free_gpu_memory_fraction = 0.9 of the memory free "
                                  "after weights and activations, converted to a fraction of the card",
        "preemption": "capacityScheduler.cpp MaxUtilizationScheduler pauses the last started requests "
                      "(MAX_UTILIZATION only)",
    },
}


def apply_preset(engine: Engine, target: Target | None = None) -> Engine:
    """`engine` with its preset's defaults in every field the scenario did not set; the
    hardware/model-dependent ones too when `target` is given."""
    preset = PRESETS[engine.preset]
    defaults = dict(preset["defaults"])
    data = engine.model_dump()
    for key, value in defaults.items():
        if key not in engine.model_fields_set:
            data[key] = value
    resolve = preset.get("resolve")
    if target is not None and resolve is not None:
        partial = type(engine)(**data)
        for key, value in resolve(partial, target, engine.model_fields_set).items():
            if key not in engine.model_fields_set:
                data[key] = value
    return type(engine)(**data)


def preset_target(scenario: Scenario) -> Target:
    """The GPU, model and parallelism a preset's hardware-dependent defaults are computed from."""
    gpu_name = scenario.hardware.gpu if isinstance(scenario.hardware.gpu, str) else None
    return Target(scenario.gpu_spec(), gpu_name, scenario.model_spec(), scenario.hardware.tensor_parallel)


def resolve_engine(scenario: Scenario) -> Engine:
    """The scenario's engine with its preset applied for the scenario's GPU and model."""
    return apply_preset(scenario.engine, preset_target(scenario))
