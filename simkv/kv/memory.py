"""How much KV cache a replica has: GPU memory x fraction - weights - activations, per GPU.

Models: capacity (token slots) = (memory_gib x gpu_memory_utilization - weights per GPU -
activation reserve) / KV bytes per token per GPU, rounded down to whole blocks (what vLLM
reports as "# GPU blocks"); a measured block count overrides the arithmetic.
Activation reserve (unless given): the peak of one forward pass of max_num_batched_tokens tokens,
estimated as the live bf16 tensors of one layer (input, qkv, attention output, MLP up and
activation) plus fp32 logits of max_num_seqs sampled rows, for at most 16,384 tokens (larger
steps are assumed to reuse activation buffers in pieces). This is an estimate; set
engine.activation_reserve_gib to what your engine reports for exact numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from simkv.errors import ScenarioDoesNotFit
from simkv.specs import GIB, GpuSpec, ModelSpec


ACTIVATION_TOKENS_CAP = 16384


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory budget of one replica (bytes unless named otherwise)."""

    budget_bytes: float
    weight_bytes: float
    activation_bytes: float
    kv_bytes: float
    kv_bytes_per_token: int
    num_blocks: int
    block_size: int

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def describe(self) -> dict:
        return {
            "gpu_budget_gib": self.budget_bytes / GIB, "weights_gib": self.weight_bytes / GIB,
            "activation_reserve_gib": self.activation_bytes / GIB, "kv_cache_gib": self.kv_bytes / GIB,
            "kv_bytes_per_token": self.kv_bytes_per_token, "num_blocks": self.num_blocks,
            "block_size": self.block_size, "capacity_tokens": self.capacity_tokens,
        }


def estimate_activation_bytes(model: ModelSpec, tensor_parallel: int, max_num_batched_tokens: int,
                              max_num_seqs: int) -> float:
    """Peak activation memory of one forward pass (see module docstring)."""
    d = model.shard(tensor_parallel)
    up = 2 * d.intermediate if d.gated else d.intermediate
    per_token = 2 * d.hidden + (d.heads + 2 * d.kv_heads) * d.head_dim + d.heads * d.head_dim + up + d.intermediate
    logits = max_num_seqs * d.vocab * 4
    return min(max_num_batched_tokens, ACTIVATION_TOKENS_CAP) * per_token * 2 + logits


def plan_memory(model: ModelSpec, gpu: GpuSpec, *, tensor_parallel: int, gpu_memory_utilization: float,
                weight_dtype: str, kv_dtype: str, block_size: int, max_num_batched_tokens: int,
                max_num_seqs: int, activation_reserve_gib: float | None,
                num_gpu_blocks: int | None, extra_weight_bytes: float = 0.0,
                extra_kv_bytes_per_token: int = 0) -> MemoryPlan:
    """The KV capacity of one replica; raises ScenarioDoesNotFit when the weights do not fit.
    `extra_*`: a speculative draft model's weights and KV bytes per token, per GPU (its KV blocks
    are allocated together with the target's, as vLLM does)."""
    budget = gpu.memory_bytes * gpu_memory_utilization
    weights = model.weight_bytes_per_gpu(weight_dtype, tensor_parallel) + extra_weight_bytes
    per_token = model.kv_bytes_per_token(kv_dtype, tensor_parallel) + extra_kv_bytes_per_token
    activations = (activation_reserve_gib * GIB if activation_reserve_gib is not None else
                   estimate_activation_bytes(model, tensor_parallel, max_num_batched_tokens, max_num_seqs))
    if num_gpu_blocks is not None:
        return MemoryPlan(budget, weights, activations, num_gpu_blocks * block_size * per_token,
                          per_token, num_gpu_blocks, block_size)
    if weights + activations >= budget:
        need_tp = next((tp for tp in (2, 4, 8) if tp > tensor_parallel
                        and model.weight_bytes_per_gpu(weight_dtype, tp) + activations / tp < budget), None)
        smaller = {"bf16": "fp8 or int4", "fp16": "fp8 or int4", "fp8": "int4"}.get(weight_dtype)
        fix = (f"raise hardware.tensor_parallel to {need_tp}" if need_tp else "pick a larger GPU") + \
              ", raise engine.gpu_memory_utilization" + (f", or use engine.weight_dtype: {smaller}" if smaller else "")
        raise ScenarioDoesNotFit(
            f"the model does not fit: {weights / GIB:.1f} GiB of {weight_dtype} weights plus "
            f"{activations / GIB:.1f} GiB of activations per GPU exceed the {budget / GIB:.1f} GiB the engine "
            f"may use ({gpu.memory_gib:.1f} GiB x {gpu_memory_utilization}) at tensor_parallel {tensor_parallel}",
            field="model / hardware", fix=fix)
    kv = budget - weights - activations
    num_blocks = int(kv // (per_token * block_size))
    return MemoryPlan(budget, weights, activations, num_blocks * block_size * per_token, per_token,
                      num_blocks, block_size)
