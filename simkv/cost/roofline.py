"""Roofline step time: every kernel takes max(FLOPs / compute ceiling, bytes / memory ceiling).

Models, per tensor-parallel shard and per layer: the four linear layers (qkv, o, gate+up or fc1,
down or fc2) over all tokens of the step; attention per prefill sequence (causal) and one
decode-attention kernel over the ragged decode contexts (summed per sequence, never averaged);
memory-bound elementwise ops (2 rmsnorm, 2 residual adds, rope, activation); two all-reduces
over NVLink when tensor_parallel > 1; lm_head on the sampled tokens; a host overhead per step.
Ceilings: the measured matmul rate and copy bandwidth (device.json) where the GPU has them, else
the datasheet.
Simplifications: no launch gaps or kernel tails (a lower bound on small steps: the calibrated
model of a later issue learns those), no embedding lookup or sampling.
"""

from __future__ import annotations

import numpy as np

from simkv.cost.offload import OffloadPricing, kv_load_seconds
from simkv.errors import SimkvError
from simkv.sched.base import StepPlan
from simkv.specs import DTYPE_BYTES, GpuSpec, ModelSpec, weight_bytes_per_param

ACT_BYTES = 2  # activations are bf16


def _check_rates(rates: dict[str, float], host_overhead_s: float) -> None:
    """Ceilings must be finite and positive, the host overhead finite and non-negative: anything
    else gives infinite or meaningless step times."""
    for name, value in rates.items():
        if not (np.isfinite(value) and value > 0):
            raise SimkvError(f"the GPU's {name} ceiling is {value!r}", field="hardware.gpu",
                             fix="give finite, positive bandwidth and compute numbers in the GPU entry")
    if not (np.isfinite(host_overhead_s) and host_overhead_s >= 0):
        raise SimkvError(f"host_overhead_s is {host_overhead_s!r}", field="engine.host_overhead_s",
                         fix="give a finite, non-negative time in seconds")


class RooflineCost(OffloadPricing):
    """Per-kernel roofline over a model shard on one GPU."""

    decode_attention_scale = 1.0   # block-size term (simkv.cost.block_size), set by the builder

    def __init__(self, model: ModelSpec, gpu: GpuSpec, *, tensor_parallel: int = 1,
                 weight_dtype: str = "bf16", kv_dtype: str = "bf16", host_overhead_s: float = 0.0,
                 expert_parallel: bool = False, expert_imbalance: float = 1.0) -> None:
        d = model.shard(tensor_parallel)
        self.dims = d
        self.flops_per_s = gpu.achievable_flops(weight_dtype)
        self.bytes_per_s = gpu.achievable_bandwidth_bps
        self.link_bytes_per_s = gpu.nvlink_gbps * 1e9
        self.host_overhead_s = host_overhead_s
        self.wb = weight_bytes_per_param(weight_dtype)
        self.head_wb = 2 if weight_dtype == "int4" else self.wb  # int4 checkpoints keep lm_head bf16
        self.kvb = DTYPE_BYTES[kv_dtype]
        q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
        up = 2 * d.intermediate if d.gated else d.intermediate
        # (k, n) of each linear layer of one layer
        self.linears = [(d.hidden, q + 2 * kv), (q, d.hidden), (d.hidden, up), (d.intermediate, d.hidden)]
        # bytes moved per token per layer by elementwise kernels (read + write)
        act = 2 * 2 * d.hidden + 2 * 3 * d.hidden + 2 * (q + kv) + (up + d.intermediate)
        self.elementwise_bytes_per_token = act * ACT_BYTES
        self.q_width, self.kv_width = q, kv
        self.layers = d.num_layers
        self.tp = tensor_parallel
        self.kv_bytes_per_token = model.kv_bytes_per_token(kv_dtype, tensor_parallel)
        self.d2h_bytes_per_s, self.h2d_bytes_per_s = gpu.device_to_host_bps, gpu.host_to_device_bps
        self._fixed_cache: dict[tuple[int, int], float] = {}
        self.gpu, self.weight_dtype, self.kv_dtype = gpu, weight_dtype, kv_dtype
        _check_rates({"compute (FLOP/s)": self.flops_per_s, "memory bandwidth (B/s)": self.bytes_per_s,
                      "nvlink (B/s)": self.link_bytes_per_s, "device-to-host (B/s)": self.d2h_bytes_per_s,
                      "host-to-device (B/s)": self.h2d_bytes_per_s}, host_overhead_s)
        self.moe, self.moe_layers = None, model.num_moe_layers
        if model.moe is not None:  # MoE layers: the experts' roofline instead of the dense MLP (simkv.cost.moe)
            from simkv.cost.moe import MoeLayer
            self.moe = MoeLayer(None, None, model, tensor_parallel, dtype=weight_dtype,
                                expert_parallel=expert_parallel, imbalance=expert_imbalance)

    def sources(self) -> dict[str, str]:
        """Where each cost component's numbers come from (roofline ceilings, nothing fitted)."""
        from simkv.cost.calibrated import _allreduce_source, host_overhead_source, swap_source
        gpu = self.gpu
        ceilings = (f"{gpu.description} measured ceilings (copy {gpu.measured.copy_gbps:.0f} GB/s, bf16 matmul "
                    f"{gpu.measured.bf16_matmul_tflops:.0f} TFLOP/s)" if gpu.measured else
                    f"{gpu.description} datasheet ceilings ({gpu.hbm_bandwidth_gbps:g} GB/s, bf16 {gpu.bf16_tflops:g} TFLOP/s; not measured)")
        roof = f"roofline: max(FLOPs / compute, bytes / bandwidth) with {ceilings}"
        fp8 = ("datasheet fp8 rate x measured/datasheet bf16 ratio" if gpu.measured else "datasheet fp8 rate")
        return {
            "gemm": roof, "lm_head": roof, "attention_prefill": roof, "attention_decode": roof,
            "elementwise": f"roofline: bytes moved / bandwidth with {ceilings}",
            "layer_correction": "roofline: no fitted correction (no launch gaps or kernel tails: a lower bound on small steps)",
            "fp8_weights": f"roofline: {fp8} (not measured)" if self.weight_dtype == "fp8" else f"n/a ({self.weight_dtype} weights)",
            "kv_fp8_attention": ("roofline: fp8 KV read at 1 byte per element (not measured)" if self.kvb != 2
                                 else f"n/a ({self.kv_dtype} KV cache)"),
            "tp_allreduce": _allreduce_source(self.tp, self.link_bytes_per_s),
            "swap": swap_source(gpu),
            "host_overhead": self.host_source or host_overhead_source(self.host_overhead_s),
            "int4_weights": (f"roofline (not measured): W4A16, {self.wb:.3f} bytes per weight at the bf16 rate; lm_head bf16"
                             if self.weight_dtype == "int4" else f"n/a ({self.weight_dtype} weights)"),
            **({"moe_experts": roof + " over the active experts' weights (balanced routing unless engine.expert_load_imbalance)",
                "moe_all_to_all": ("roofline (not measured): dispatch + combine over NVLink" if self.moe.ep > 1
                                   else "n/a (no expert parallelism)")} if self.moe is not None else {}),
            **self.offload_sources(),
        }

    # ------------------------------------------------------------ kernels
    def _linear_s(self, m: int) -> float:
        """Per-layer linear time (the average over dense and MoE layers for an MoE model)."""
        parts = []
        for k, n in self.linears:
            flops = 2.0 * m * k * n
            moved = k * n * self.wb + m * (k + n) * ACT_BYTES
            parts.append(max(flops / self.flops_per_s, moved / self.bytes_per_s))
        if self.moe is None:
            return sum(parts)
        from simkv.cost.moe import roofline_moe_linear_s
        moe = parts[0] + parts[1] + roofline_moe_linear_s(m, self.moe, self.wb, self.flops_per_s, self.bytes_per_s)
        if self.tp > 1 and self.moe.ep > 1:  # one all-reduce replaced by dispatch + combine
            moe += float(self.moe.all_to_all_bytes(m)) / self.link_bytes_per_s - self._allreduce_s(m) / 2
        return ((self.layers - self.moe_layers) * sum(parts) + self.moe_layers * moe) / self.layers

    def _lm_head_s(self, m: int) -> float:
        if m == 0:
            return 0.0
        d = self.dims
        flops = 2.0 * m * d.hidden * d.vocab
        moved = d.hidden * d.vocab * self.head_wb + m * (d.hidden + d.vocab) * ACT_BYTES
        return max(flops / self.flops_per_s, moved / self.bytes_per_s)

    def _allreduce_s(self, m: int) -> float:
        if self.tp == 1 or m == 0:
            return 0.0
        ring = 2.0 * (self.tp - 1) / self.tp * m * self.dims.hidden * ACT_BYTES
        return 2 * ring / self.link_bytes_per_s  # two all-reduces per layer

    def _prefill_attention_s(self, new: np.ndarray, ctx: np.ndarray) -> float:
        """Causal attention of `new` query tokens against `ctx` keys (the last `new` of them new)."""
        if not len(new):
            return 0.0
        cached = ctx - new
        pairs = new * cached + new * (new + 1) / 2.0  # query-key pairs under the causal mask
        flops = 4.0 * self.dims.heads * self.dims.head_dim * pairs
        moved = (2 * new * self.q_width) * ACT_BYTES + 2 * ctx * self.kv_width * self.kvb
        return float(np.maximum(flops / self.flops_per_s, moved / self.bytes_per_s).sum())

    def _decode_attention_parts(self, n: int) -> tuple[float, float, float, float]:
        """(flops per context token, bytes per context token, fixed flops, fixed bytes) of one
        decode-attention kernel over n sequences."""
        flops_per_ctx = 4.0 * self.dims.heads * self.dims.head_dim
        bytes_per_ctx = 2.0 * self.kv_width * self.kvb
        return flops_per_ctx, bytes_per_ctx, 0.0, 2.0 * n * self.q_width * ACT_BYTES

    # ------------------------------------------------------------ step
    def _fixed_s(self, num_tokens: int, num_sampled: int) -> float:
        """Everything but attention: linears, elementwise, all-reduce per layer; lm_head; host.
        Memoised: the engine asks for the same batch shapes over and over."""
        key = (num_tokens, num_sampled)
        cached = self._fixed_cache.get(key)
        if cached is None:
            per_layer = (self._linear_s(num_tokens) + num_tokens * self.elementwise_bytes_per_token / self.bytes_per_s
                         + self._allreduce_s(num_tokens))
            cached = self.layers * per_layer + self._lm_head_s(num_sampled) + self.host_overhead_s
            if len(self._fixed_cache) < 100_000:
                self._fixed_cache[key] = cached
        return cached

    def transfer_seconds(self, plan: StepPlan) -> float:
        """Swap traffic of the step at the host link rates (not overlapped)."""
        return self.kv_bytes_per_token * (plan.swap_out_tokens / self.d2h_bytes_per_s
                                          + plan.swap_in_tokens / self.h2d_bytes_per_s) + kv_load_seconds(self, plan)

    host_per_seq_s = 0.0           # host time per sequence in a step (simkv.features.host_overhead), set by the builder
    host_source: str | None = None

    def seconds(self, plan: StepPlan) -> float:
        return self._compute_seconds(plan) + self.transfer_seconds(plan) + self.host_per_seq_s * plan.num_seqs

    def _compute_seconds(self, plan: StepPlan) -> float:
        tokens = plan.num_batched_tokens
        if tokens == 0:
            return self.host_overhead_s
        attn = self._prefill_attention_s(plan.prefill_new, plan.prefill_ctx)
        n = len(plan.decode_ctx)
        if n:
            fpc, bpc, f0, b0 = self._decode_attention_parts(n)
            fpc *= plan.decode_tokens  # speculative verification: k + 1 queries per sequence read the KV once
            total_ctx = float(plan.decode_ctx.sum())
            attn += self.decode_attention_scale * max((f0 + fpc * total_ctx) / self.flops_per_s,
                                                      (b0 + bpc * total_ctx) / self.bytes_per_s)
        return self._fixed_s(tokens, plan.num_sampled) + self.layers * attn

    def layer_seconds(self, plan: StepPlan) -> float:
        """One decoder layer of the step (no lm_head, no host overhead)."""
        return (self._compute_seconds(plan) - self._lm_head_s(plan.num_sampled) - self.host_overhead_s) / self.layers

    def decode_run_seconds(self, decode_ctx: np.ndarray, num_steps: int) -> np.ndarray:
        n = len(decode_ctx)
        fixed = self._fixed_s(n, n)
        fpc, bpc, f0, b0 = self._decode_attention_parts(n)
        total_ctx = float(decode_ctx.sum()) + n * np.arange(num_steps, dtype=np.float64)
        attn = self.decode_attention_scale * np.maximum((f0 + fpc * total_ctx) / self.flops_per_s,
                                                        (b0 + bpc * total_ctx) / self.bytes_per_s)
        return fixed + self.layers * attn + self.host_per_seq_s * n
