"""Engine presets: the policies and defaults of real serving engines, as data with sources.

A preset fills every engine field the scenario leaves unset; fields the scenario sets win.
"""

from __future__ import annotations

from simkv.scenario import Engine

PRESETS: dict[str, dict] = {
    "simkv": {
        "source": "simkv's core policy: FCFS iteration-level batching, whole prompts mixed with decodes",
        "defaults": {"scheduler": "fcfs"},
    },
    "vllm-v1": {
        "source": "vLLM V1 engine (vllm/v1/core/sched/scheduler.py, kv_cache_manager.py): token budget "
                  "max_num_batched_tokens (8192 for the OpenAI server on a large GPU), chunked prefill always on, "
                  "block size 16, gpu_memory_utilization 0.9, automatic prefix caching on, recompute preemption of the "
                  "last running request",
        "defaults": {"scheduler": "chunked", "allocator": "paged", "block_size": 16, "gpu_memory_utilization": 0.9,
                     "max_num_batched_tokens": 8192, "max_num_seqs": 256, "preemption": "recompute", "watermark": 0.0,
                     "prefix_caching": True},
    },
    "vllm-v0": {
        "source": "vLLM V0 scheduler (vllm/core/scheduler.py _schedule_default): prefill-prioritised steps, "
                  "watermark 0.01, block size 16, swap_space 4 GiB, preemption by swap",
        "defaults": {"scheduler": "prefill-first", "allocator": "paged", "block_size": 16,
                     "gpu_memory_utilization": 0.9, "max_num_seqs": 256, "watermark": 0.01, "preemption": "swap",
                     "swap_space_gib": 4.0},
    },
    "tgi": {
        "source": "text-generation-inference v3 router (backends/v3): paged blocks of 16 reserved for prompt + "
                  "max_new_tokens at admission, no preemption, max_batch_prefill_tokens 4096, waiting_served_ratio 0.3, "
                  "max_waiting_tokens 20, max_concurrent_requests 128",
        "defaults": {"scheduler": "tgi", "allocator": "paged", "block_size": 16, "reserve_upfront": True,
                     "gpu_memory_utilization": 0.9, "max_batch_prefill_tokens": 4096, "waiting_served_ratio": 0.3,
                     "max_waiting_tokens": 20, "max_concurrent_requests": 128, "max_num_seqs": 1024},
    },
    "orca-max": {
        "source": "Orca (OSDI'22) as modelled in the PagedAttention paper (SOSP'23 Fig. 2): iteration-level "
                  "batching, a buddy allocator, contiguous reservation of the maximum sequence length",
        "defaults": {"scheduler": "fcfs", "allocator": "contiguous", "reservation": "max_model_len",
                     "placement": "buddy"},
    },
    "orca-pow2": {
        "source": "Orca-Pow2 (PagedAttention paper): contiguous reservation of the next power of two of the final length",
        "defaults": {"scheduler": "fcfs", "allocator": "contiguous", "reservation": "pow2", "placement": "buddy"},
    },
    "orca-oracle": {
        "source": "Orca-Oracle (PagedAttention paper): contiguous reservation of exactly the final length",
        "defaults": {"scheduler": "fcfs", "allocator": "contiguous", "reservation": "oracle", "placement": "buddy"},
    },
    "fastertransformer": {
        "source": "NVIDIA FasterTransformer: static request-level batches, contiguous max-length KV buffers; "
                  "the whole batch is prefilled in one pass (budget 65,536 prompt tokens)",
        "defaults": {"scheduler": "static", "allocator": "contiguous", "reservation": "max_model_len",
                     "max_num_batched_tokens": 65536},
    },
    "sarathi-serve": {
        "source": "Sarathi-Serve (OSDI'24): stall-free batching, chunked prefill with a token budget of 512",
        "defaults": {"scheduler": "chunked", "allocator": "paged", "block_size": 16, "max_num_batched_tokens": 512,
                     "max_num_seqs": 256, "preemption": "recompute"},
    },
}


def apply_preset(engine: Engine) -> Engine:
    """`engine` with its preset's defaults in every field the scenario did not set."""
    defaults = PRESETS[engine.preset]["defaults"]
    data = engine.model_dump()
    for key, value in defaults.items():
        if key not in engine.model_fields_set:
            data[key] = value
    return Engine(**data)
