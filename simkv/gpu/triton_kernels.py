"""The paged decode-attention kernel in Triton, as PagedAttention computes it: one program per
(sequence, query head) walks the sequence's block table, loads each KV block in place (no copy
of the cache) and keeps an online softmax. Used on a GPU when Triton is installed; the tests run
it through Triton's CPU interpreter (TRITON_INTERPRET=1) against dense attention."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode(Q, K, V, BT, CTX, O, scale,
                  stride_qb, stride_qh, stride_kn, stride_kp, stride_kh, stride_bt, stride_ob, stride_oh,
                  GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // GROUP
    ctx = tl.load(CTX + b)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + d).to(tl.float32)
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.full((), 0.0, tl.float32)
    acc = tl.zeros((HEAD_DIM,), dtype=tl.float32)
    for i in range(0, tl.cdiv(ctx, BLOCK_SIZE)):
        block = tl.load(BT + b * stride_bt + i).to(tl.int64)      # large pools: offsets past 2**31
        slot = tl.arange(0, BLOCK_SIZE)
        valid = i * BLOCK_SIZE + slot < ctx
        offs = block * stride_kn + slot[:, None] * stride_kp + kvh * stride_kh + d[None, :]
        k = tl.load(K + offs, mask=valid[:, None], other=0.0).to(tl.float32)
        s = tl.where(valid, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new)
        v = tl.load(V + offs, mask=valid[:, None], other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        m_i = m_new
    tl.store(O + b * stride_ob + h * stride_oh + d, (acc / l_i).to(O.dtype.element_ty))


def paged_decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                  block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Same contract as kernels.paged_decode_attention: q [batch, heads, d], caches [blocks,
    block_size, kv_heads, d], block_tables [batch, max_blocks], context_lens [batch]."""
    batch, heads, head_dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    q, k_cache, v_cache = q.contiguous(), k_cache.contiguous(), v_cache.contiguous()
    block_tables = block_tables.to(torch.int32).contiguous()
    context_lens = context_lens.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    _paged_decode[(batch, heads)](q, k_cache, v_cache, block_tables, context_lens, out, scale,
                                  q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                                  block_tables.stride(0), out.stride(0), out.stride(1),
                                  GROUP=heads // kv_heads, BLOCK_SIZE=block_size, HEAD_DIM=head_dim)
    return out
