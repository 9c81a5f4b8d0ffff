"""LoRA adapters: the workload's adapters (`workload.lora`) and the engine's adapter slots
(`engine.lora`), as data, plus the arithmetic both sides share.

Models: every request (all sequences of one request alike) names an adapter, drawn from the seed
uniformly or with Zipf popularity (P(i) proportional to 1 / (i + 1)^s); a share `base_fraction`
runs the base model. An adapter of rank r adds, to every target linear layer (k, n) of every
decoder layer (vLLM's default: q/k/v, o, gate/up, down), A[k, r] and B[r, n] in bf16:
r x sum (k + n) x 2 bytes, split across the tensor-parallel GPUs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from simkv.specs import ModelSpec, Strict


class LoraWorkload(Strict):
    """Which adapter each request uses."""

    adapters: PositiveInt = Field(description="distinct adapters the requests use (count)")
    popularity: Literal["uniform", "zipf"] = Field("uniform", description="how often each adapter is asked for")
    zipf_s: PositiveFloat = Field(1.0, description="zipf: exponent s of P(i) ~ 1 / (i + 1)^s (dimensionless)")
    rank: PositiveInt = Field(16, description="rank of every adapter (dimensionless)")
    base_fraction: float = Field(0.0, ge=0, lt=1, description="share of requests on the base model, no adapter (dimensionless)")


class LoraEngine(Strict):
    """vLLM's LoRA serving limits (TGI preloads every adapter: see docs/modern-models.md)."""

    max_loras: PositiveInt = Field(4, description="most distinct adapters in the running batch = GPU adapter slots (count)")
    max_lora_rank: PositiveInt = Field(16, description="largest adapter rank; the GPU slots are sized for it (dimensionless)")
    max_cpu_loras: PositiveInt | None = Field(None, description="adapters kept in host memory (count); default: all of them")
    overhead_per_adapter_s: NonNegativeFloat = Field(
        4e-6, description="stated step cost per distinct adapter in the batch per decoder layer (s): the grouped "
        "low-rank kernels' fixed part (assumed, not measured)")


def lora_shapes(model: ModelSpec, tp: int) -> list[tuple[int, int]]:
    """(k, n) of the target linear layers of one decoder layer, per GPU (dense layers' MLP)."""
    from simkv.cost.layer import linear_shapes
    return linear_shapes(model.shard(tp))


def adapter_bytes(model: ModelSpec, rank: int, tp: int) -> float:
    """GPU bytes of one adapter of `rank` (bf16 A and B for every target layer), per GPU."""
    return float(rank * sum(k + n for k, n in lora_shapes(model, tp)) * 2 * model.num_layers)


def sample_adapters(w: LoraWorkload, group: np.ndarray, seed: int) -> np.ndarray:
    """Adapter id per request row (-1: base model), one draw per request group."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 21]))
    groups, inverse = np.unique(group, return_inverse=True)
    if w.popularity == "zipf":
        p = 1.0 / np.arange(1, w.adapters + 1) ** w.zipf_s
        p = p / p.sum()
    else:
        p = np.full(w.adapters, 1.0 / w.adapters)
    ids = rng.choice(w.adapters, size=len(groups), p=p).astype(np.int64)
    base = rng.random(len(groups)) < w.base_fraction
    ids[base] = -1
    return ids[inverse]
