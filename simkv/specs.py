"""Model architectures and GPU specifications as validated data (the catalog's schema).

Models: the dimensions that set weight bytes, KV bytes per token and step FLOPs.
Simplifications: dense decoder-only transformers (no MoE, no sliding-window eviction).
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


class Strict(BaseModel):
    """Base for every schema object: unknown fields are errors, objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    source: str = Field("user-defined", description="where these numbers come from")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSpec":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        return self

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
        """Weights held by one GPU: parameters split evenly across the tensor-parallel group."""
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
