"""Attention over a KV cache (PyTorch): the paged decode kernel (block tables gathered into each
sequence's keys and values, as PagedAttention reads them), prefill/chunk attention over cached +
new positions, and the dense reference the tests compare them with.

Shapes: queries [tokens, heads, head_dim]; a paged cache [num_blocks, block_size, kv_heads,
head_dim]; grouped-query attention when heads > kv_heads (each KV head serves heads/kv_heads
query heads, as in Llama-3).
"""

from __future__ import annotations

import torch


def gather_paged(cache: torch.Tensor, block_tables: torch.Tensor, max_len: int) -> torch.Tensor:
    """[batch, max_len, kv_heads, head_dim]: each sequence's cache rows in position order, read
    through its block table ([batch, blocks], padded with any valid block id)."""
    batch, blocks = block_tables.shape
    block_size = cache.shape[1]
    rows = cache[block_tables.reshape(-1)].reshape(batch, blocks * block_size, *cache.shape[2:])
    return rows[:, :max_len]


def attention_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                     kv_len: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of q [batch, q_len, heads, d] at positions q_pos [batch, q_len] over k, v [batch,
    L, kv_heads, d], where key j is visible to a query at position p when j <= p and j < kv_len."""
    batch, q_len, heads, d = q.shape
    kv_heads, length = k.shape[2], k.shape[1]
    group = heads // kv_heads
    qg = q.reshape(batch, q_len, kv_heads, group, d)
    scores = torch.einsum("bqhgd,bkhd->bhgqk", qg, k) * scale
    j = torch.arange(length, device=q.device)
    visible = (j[None, None, :] <= q_pos[:, :, None]) & (j[None, None, :] < kv_len[:, None, None])
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    out = torch.einsum("bhgqk,bkhd->bqhgd", probs, v)
    return out.reshape(batch, q_len, heads, d)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """One new token per sequence (q [batch, heads, d]) attending to its first context_lens
    positions, read block by block from the paged cache; [batch, heads, d]."""
    max_len = int(context_lens.max())
    k = gather_paged(k_cache, block_tables, max_len)
    v = gather_paged(v_cache, block_tables, max_len)
    pos = (context_lens - 1)[:, None]
    return attention_padded(q[:, None], k, v, pos, context_lens, scale)[:, 0]


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """The reference: q [n, heads, d] at positions q_pos over one sequence's k, v [L, kv_heads, d],
    causal, computed head by head with plain matmuls."""
    heads, kv_heads = q.shape[1], k.shape[1]
    group = heads // kv_heads
    out = torch.empty_like(q)
    j = torch.arange(k.shape[0], device=q.device)
    for h in range(heads):
        kh, vh = k[:, h // group], v[:, h // group]
        s = (q[:, h] @ kh.T) * scale
        s = s.masked_fill(j[None, :] > q_pos[:, None], float("-inf"))
        out[:, h] = torch.softmax(s, dim=-1) @ vh
    return out
