"""How the paged decode-attention kernel's cost depends on the KV block (page) size.

Model (a stated estimate from public measurements, not a simkv calibration): the decode-attention
time of a step is multiplied by

    f(b) = 1 + PENALTY_PER_HALVING x log2(16 / b)   for b < 16,   f(b) = 1 for b >= 16

for a block-table kernel that processes a block per warp iteration (vLLM's paged_attention v1/v2 CUDA
kernels, TGI's and TensorRT-LLM's block-table kernels). Source: Kwon et al., "Efficient Memory
Management for LLM Serving with PagedAttention" (SOSP'23), §7.2 and Fig. 18(b): with block sizes
below 16 the kernel "cannot fully utilize the GPU's parallelism for reading and processing KV
cache" and latency rises, while 16 to 128 perform alike (vLLM's default is 16). simkv reads
PENALTY_PER_HALVING = 0.25 (about 2x the attention time at block size 1) off that figure; it is a
labelled estimate. Kernels that gather KV per token (FlashInfer's page-size-1 kernels, SGLang's
default) have no block-size term: f = 1 (FlashInfer paper, Ye et al. MLSys'25, §3.1: block-sparse
loading at any page size).
Above 16 no kernel gain is modelled, so the block-size trade-off is kernel cost below 16 against
internal fragmentation above it. To measure it on a GPU, time the validation mode's paged decode
kernel (simkv.gpu.kernels) at several block sizes with `simkv calibrate` and replace this curve.
"""

from __future__ import annotations

import math

REFERENCE_BLOCK = 16
PENALTY_PER_HALVING = 0.25
SOURCE = ("estimate from the PagedAttention paper (SOSP'23) Fig. 18(b): +25% decode-attention time per halving "
          "of the block below 16; none for per-token-gather kernels (FlashInfer page size 1)")
PER_TOKEN_GATHER_SCHEDULERS = ("sglang",)


def decode_attention_factor(block_size: int, per_token_gather: bool = False) -> float:
    """Multiplier on decode-attention time for `block_size`-token blocks (1.0 at 16 and above)."""
    if per_token_gather or block_size >= REFERENCE_BLOCK:
        return 1.0
    return 1.0 + PENALTY_PER_HALVING * math.log2(REFERENCE_BLOCK / block_size)
