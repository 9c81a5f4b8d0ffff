"""Model architectures and GPU specifications as validated data (the catalog's schema).

Models: the dimensions that set weight bytes, KV bytes per token and step FLOPs.
Mixture-of-experts models (`moe:`) replace the MLP of every `moe_layer_step`-th layer by routed
experts (plus optional shared experts); attention stays dense. Every expert's weights are resident.
Simplifications: decoder-only transformers (no sliding-window eviction); biases, norms' tiny
weights other than RMSNorm scales, and vision towers are not in the architecture count.
"""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Ge, Gt
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic import Strict as _StrictMode

Z99 = 2.3263478740408408  # standard normal 99th percentile
MAX_REQUESTS = 10_000_000  # requests one run may generate: ~2 GB of request tables, minutes of simulation

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1}
DType = Literal["bf16", "fp16", "fp8"]
# int4 weights are W4A16 (AWQ / GPTQ style): 4-bit weights in groups of INT4_GROUP_SIZE, each group
# with one fp16 scale and one packed 4-bit zero point; activations and the embeddings / lm_head stay bf16
WeightDType = Literal["bf16", "fp16", "fp8", "int4"]
INT4_GROUP_SIZE = 128
INT4_BYTES_PER_PARAM = 0.5 + (2 + 0.5) / INT4_GROUP_SIZE
GIB = 1024 ** 3

# ---------------------------------------------------------------- strict numbers
# YAML hands over booleans, text and huge integers where numbers belong; a schema number takes
# only an int or a float (an int is fine for a float field), never `true` (which Python counts
# as 1) or a string, is finite (allow_inf_nan=False below) and, for integers, at most 2**53
# (exact as a float, and far beyond any physical count).

MAX_INT = 2 ** 53


def _number(value):
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    if isinstance(value, (str, bytes)):
        raise ValueError(f"expected a number, got the text {value!r} (write the number without quotes)")
    if isinstance(value, int) and abs(value) > MAX_INT:
        digits = int(abs(value).bit_length() * 0.30103) + 1   # no str(): Python refuses huge ints
        raise ValueError(f"a number of about {digits} digits is beyond any plausible value")
    return value


_Num = BeforeValidator(_number)
Float = Annotated[float, _Num]
PositiveInt = Annotated[int, Gt(0), _Num]
NonNegativeInt = Annotated[int, Ge(0), _Num]
PositiveFloat = Annotated[float, Gt(0), _Num]
NonNegativeFloat = Annotated[float, Ge(0), _Num]
Bool = Annotated[bool, _StrictMode()]


def weight_bytes_per_param(dtype: str) -> float:
    """Bytes one quantised (linear-layer) weight takes in `dtype`, scales included."""
    return INT4_BYTES_PER_PARAM if dtype == "int4" else DTYPE_BYTES[dtype]


class Strict(BaseModel):
    """Base for every schema object: unknown fields are errors, objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MoESpec(Strict):
    """The mixture-of-experts part of a model (config.json: num_local_experts / num_experts,
    num_experts_per_tok, moe_intermediate_size, shared experts, interleave / sparse step)."""

    num_experts: PositiveInt = Field(description="routed experts per MoE layer (count)")
    experts_per_token: PositiveInt = Field(description="experts each token is routed to, the router's top-k (count)")
    expert_intermediate_size: PositiveInt = Field(description="MLP inner width of one expert (elements)")
    shared_experts: NonNegativeInt = Field(0, description="experts every token goes through, besides the routed ones (count)")
    shared_expert_intermediate_size: PositiveInt | None = Field(
        None, description="MLP inner width of a shared expert (elements); default expert_intermediate_size")
    moe_layer_step: PositiveInt = Field(
        1, description="every n-th layer is an MoE layer (layers n-1, 2n-1, ...), the others dense MLPs of "
        "intermediate_size (1: all layers; Llama 4 Maverick: 2)")
    router: Literal["softmax_topk", "sigmoid_topk"] = Field("softmax_topk", description="how the router picks and weighs the top-k experts")

    @model_validator(mode="after")
    def _topk_fits(self) -> "MoESpec":
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"experts_per_token ({self.experts_per_token}) exceeds num_experts ({self.num_experts})")
        return self

    @property
    def shared_intermediate(self) -> int:
        return self.shared_expert_intermediate_size or self.expert_intermediate_size


class ModelSpec(Strict):
    """A decoder-only transformer architecture."""

    num_layers: PositiveInt = Field(le=4096, description="decoder layers")
    hidden_size: PositiveInt = Field(le=2 ** 20, description="model width (elements)")
    num_heads: PositiveInt = Field(le=2 ** 14, description="query heads")
    num_kv_heads: PositiveInt = Field(le=2 ** 14, description="key/value heads (grouped-query attention when < num_heads)")
    head_dim: PositiveInt = Field(le=2 ** 14, description="elements per attention head")
    intermediate_size: PositiveInt = Field(le=2 ** 22, description="MLP inner width (elements)")
    vocab_size: PositiveInt = Field(le=2 ** 24, description="vocabulary entries (lm_head rows)")
    num_params: PositiveInt = Field(le=10 ** 14, description="parameters the engine loads (count)")
    max_position_embeddings: PositiveInt = Field(le=2 ** 27, description="longest context the model supports (tokens)")
    mlp: Literal["gated", "standard"] = Field("gated", description="gated (SwiGLU: gate, up, down) or standard (fc1, fc2)")
    tie_word_embeddings: bool = Field(False, description="lm_head shares the embedding matrix")
    moe: MoESpec | None = Field(None, description="mixture-of-experts layers; none for a dense model")
    source: str = Field("user-defined", description="where these numbers come from")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSpec":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        return self

    @model_validator(mode="after")
    def _moe_layers(self) -> "ModelSpec":
        if self.moe is not None and self.moe.moe_layer_step > self.num_layers:
            raise ValueError(f"moe.moe_layer_step ({self.moe.moe_layer_step}) exceeds num_layers ({self.num_layers})")
        return self

    # ------------------------------------------------------------ architecture counts
    @property
    def num_moe_layers(self) -> int:
        return 0 if self.moe is None else self.num_layers // self.moe.moe_layer_step

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    def _mlp_params(self, width: int) -> int:
        return (3 if self.mlp == "gated" else 2) * self.hidden_size * width

    def embedding_params(self) -> int:
        """Embedding matrix plus lm_head (once when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def architecture_params(self, active_only: bool = False) -> int:
        """Parameters counted from the dimensions (attention, MLPs / experts, router, RMSNorm
        scales, embeddings); `active_only`: what one token passes through (top-k + shared experts).
        An independent check of `num_params` from the model card."""
        h, hd = self.hidden_size, self.head_dim
        attention = h * self.num_heads * hd * 2 + h * self.num_kv_heads * hd * 2 + 2 * h
        total = self.num_dense_layers * (attention + self._mlp_params(self.intermediate_size))
        if self.moe is not None:
            m = self.moe
            routed = m.experts_per_token if active_only else m.num_experts
            per_layer = (attention + routed * self._mlp_params(m.expert_intermediate_size)
                         + m.shared_experts * self._mlp_params(m.shared_intermediate) + h * m.num_experts)
            total += self.num_moe_layers * per_layer
        return total + self.embedding_params() + h

    def shard(self, tensor_parallel: int) -> "ShardDims":
        """Per-GPU dimensions under tensor parallelism (KV heads replicated when tp > kv heads)."""
        tp = tensor_parallel
        if self.num_heads % tp:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by tensor_parallel {tp}")
        if self.num_kv_heads % tp and tp % self.num_kv_heads:
            raise ValueError(f"num_kv_heads {self.num_kv_heads} and tensor_parallel {tp} do not divide each other")
        return ShardDims(
            num_layers=self.num_layers, hidden=self.hidden_size, heads=self.num_heads // tp,
            kv_heads=max(1, self.num_kv_heads // tp), head_dim=self.head_dim,
            intermediate=-(-self.intermediate_size // tp), vocab=-(-self.vocab_size // tp),
            gated=self.mlp == "gated", tp=tp)

    def weight_bytes_per_gpu(self, dtype: str, tensor_parallel: int) -> float:
        """Weights held by one GPU: parameters split evenly across the tensor-parallel group (with
        expert parallelism each GPU holds 1/tp of the experts instead: the same bytes). int4
        quantises every weight but the embeddings and lm_head, which stay bf16."""
        if dtype == "int4":
            emb = min(self.embedding_params(), self.num_params)
            return ((self.num_params - emb) * INT4_BYTES_PER_PARAM + emb * DTYPE_BYTES["bf16"]) / tensor_parallel
        return self.num_params * DTYPE_BYTES[dtype] / tensor_parallel

    def kv_bytes_per_token(self, dtype: str, tensor_parallel: int) -> int:
        """2 (key and value) x layers x kv heads per shard x head_dim x bytes per element."""
        kv_heads = max(1, self.num_kv_heads // tensor_parallel)
        return 2 * self.num_layers * kv_heads * self.head_dim * DTYPE_BYTES[dtype]


class ShardDims(Strict):
    """One tensor-parallel shard's dimensions (what one GPU computes)."""

    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated: bool
    tp: int


class MeasuredCeilings(Strict):
    """Ceilings measured on a real card (device.json of the calibration runs)."""

    copy_gbps: PositiveFloat = Field(ge=1, le=1e6, description="device-to-device copy, bytes read + written per second (GB/s)")
    bf16_matmul_tflops: PositiveFloat = Field(ge=0.01, le=1e6, description="8192^3 bf16 matmul rate (TFLOP/s)")
    h2d_gbps: PositiveFloat = Field(ge=0.01, le=1e5, description="pinned host-to-device copy (GB/s)")
    d2h_gbps: PositiveFloat = Field(ge=0.01, le=1e5, description="pinned device-to-host copy (GB/s)")


class GpuSpec(Strict):
    """A GPU: memory, bandwidths and compute ceilings."""

    description: str = Field("user-defined GPU", description="what card this is")
    memory_gib: PositiveFloat = Field(le=1e5, description="device memory visible to the framework (GiB)")
    hbm_bandwidth_gbps: PositiveFloat = Field(ge=1, le=1e6, description="datasheet HBM bandwidth (GB/s)")
    bf16_tflops: PositiveFloat = Field(ge=0.01, le=1e6, description="datasheet dense bf16 tensor throughput (TFLOP/s)")
    fp8_tflops: PositiveFloat | None = Field(None, ge=0.01, le=1e6, description="datasheet dense fp8 throughput (TFLOP/s); none if unsupported")
    host_link_gbps: PositiveFloat = Field(ge=0.01, le=1e5, description="datasheet host link bandwidth per direction (GB/s)")
    nvlink_gbps: PositiveFloat = Field(450.0, ge=0.01, le=1e5, description="GPU-to-GPU bandwidth per direction for all-reduce (GB/s)")
    measured: MeasuredCeilings | None = Field(None, description="measured ceilings; preferred over datasheet values")
    calibration: str | None = Field(None, description="folder of operator and step measurements written by `simkv "
                                    "calibrate`: makes this GPU a calibrated cost-model target (relative to the catalog file)")
    source: str = Field("user-defined", description="where these numbers come from")

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB

    @property
    def achievable_bandwidth_bps(self) -> float:
        """Bytes per second a memory-bound kernel reaches: measured copy rate, else datasheet."""
        return (self.measured.copy_gbps if self.measured else self.hbm_bandwidth_gbps) * 1e9

    def achievable_flops(self, dtype: str) -> float:
        """FLOP/s a large matmul reaches in `dtype`. fp8 scales the datasheet fp8 rate by the
        measured/datasheet ratio of bf16 (the only measured matmul ceiling)."""
        eff = (self.measured.bf16_matmul_tflops / self.bf16_tflops) if self.measured else 1.0
        if dtype == "fp8":
            if self.fp8_tflops is None:
                raise ValueError(f"{self.description} has no fp8 tensor cores")
            return self.fp8_tflops * eff * 1e12
        return self.bf16_tflops * eff * 1e12

    @property
    def host_to_device_bps(self) -> float:
        return (self.measured.h2d_gbps if self.measured else self.host_link_gbps) * 1e9

    @property
    def device_to_host_bps(self) -> float:
        return (self.measured.d2h_gbps if self.measured else self.host_link_gbps) * 1e9
