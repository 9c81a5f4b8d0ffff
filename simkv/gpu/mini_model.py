"""A Llama-style decoder with random weights (the scenario's architecture, optionally fewer
layers) that computes one engine step over a KV store: the layer of the calibration runs
(rmsnorm, qkv, rope, attention, o_proj + residual, rmsnorm, gate_up, silu_mul, down + residual)
and lm_head on the token each sampled sequence emits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from simkv.gpu.kernels import attention_padded
from simkv.specs import ShardDims


def triton_decode_kernel():
    """The Triton paged decode kernel when Triton is importable, else None (the gather path)."""
    try:
        from simkv.gpu.triton_kernels import paged_decode_attention_triton
    except ImportError:
        return None
    return paged_decode_attention_triton


@dataclass(frozen=True)
class Segment:
    """One sequence's part of a step: tokens at positions [start, start + len(tokens))."""

    rid: int
    tokens: list[int]
    start: int
    sample: bool


class MiniModel:
    """Random weights (seeded, never zeros) on `device` in `dtype`."""

    def __init__(self, shape: ShardDims, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                 decode_kernel: str | None = None) -> None:
        """`shape`: one GPU's dimensions (`ModelSpec.shard(1)`), a gated MLP. decode_kernel:
        "triton" (in place through block tables) or "gather" (PyTorch); default Triton on a GPU
        where it is installed."""
        if not shape.gated:
            raise ValueError("the mini engine implements gated (SwiGLU) MLPs")
        self.shape, self.device, self.dtype = shape, device, dtype
        triton = triton_decode_kernel() if decode_kernel != "gather" else None
        if decode_kernel == "triton" and triton is None:
            raise ImportError("the Triton decode kernel needs Triton installed")
        use = decode_kernel == "triton" or (decode_kernel is None and device.startswith("cuda"))
        self._triton = triton if use else None
        self.decode_kernel = "triton" if self._triton else "gather"
        g = torch.Generator(device=device).manual_seed(seed)   # drawn on the device: an 8B model in seconds

        def weight(rows: int, cols: int) -> torch.Tensor:
            w = torch.randn(rows, cols, generator=g, device=device, dtype=dtype)
            return w.mul_(1 / math.sqrt(rows))

        def norm() -> torch.Tensor:
            return (1 + 0.1 * torch.randn(shape.hidden, generator=g, device=device)).to(dtype)

        s = shape
        qkv = (s.heads + 2 * s.kv_heads) * s.head_dim
        self.embed = torch.randn(s.vocab, s.hidden, generator=g, device=device, dtype=dtype)
        self.layers = [dict(ln1=norm(), qkv=weight(s.hidden, qkv), o=weight(s.heads * s.head_dim, s.hidden), ln2=norm(),
                            gate_up=weight(s.hidden, 2 * s.intermediate), down=weight(s.intermediate, s.hidden))
                       for _ in range(s.num_layers)]
        self.final_norm = norm()
        self.lm_head = weight(s.hidden, s.vocab)
        inv = 1.0 / (500000.0 ** (torch.arange(0, s.head_dim, 2, dtype=torch.float32) / s.head_dim))
        self.inv_freq = inv.to(device)
        self.scale = 1.0 / math.sqrt(s.head_dim)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate-half rotary embedding of x [tokens, heads, d] at `positions`."""
        angles = positions.float()[:, None] * self.inv_freq[None]
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1)[:, None].to(x.dtype)
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1)[:, None].to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def step(self, segments: list[Segment], store) -> dict[int, int]:
        """Run one step over `store` (new keys/values written before attention); the token each
        sampled segment emits (greedy)."""
        s, dev = self.shape, self.device
        tokens = torch.tensor([t for seg in segments for t in seg.tokens], dtype=torch.long, device=dev)
        positions = torch.cat([torch.arange(seg.start, seg.start + len(seg.tokens), device=dev) for seg in segments])
        slots = torch.cat([store.slots(seg.rid, torch.arange(seg.start, seg.start + len(seg.tokens), device=dev))
                           for seg in segments])
        decodes = [i for i, seg in enumerate(segments) if len(seg.tokens) == 1]
        offsets = [0]
        for seg in segments:
            offsets.append(offsets[-1] + len(seg.tokens))
        x = self.embed[tokens]
        for li, w in enumerate(self.layers):
            h = F.rms_norm(x, (s.hidden,), w["ln1"], eps=1e-5)
            qkv = h @ w["qkv"]
            q = qkv[:, :s.heads * s.head_dim].view(-1, s.heads, s.head_dim)
            k = qkv[:, s.heads * s.head_dim:(s.heads + s.kv_heads) * s.head_dim].view(-1, s.kv_heads, s.head_dim)
            v = qkv[:, (s.heads + s.kv_heads) * s.head_dim:].view(-1, s.kv_heads, s.head_dim)
            q, k = self._rope(q, positions), self._rope(k, positions)
            store.write(li, slots, k, v)
            attn = torch.empty_like(q)
            if decodes:
                idx = torch.tensor([offsets[i] for i in decodes], device=dev)
                ctx = torch.tensor([segments[i].start + 1 for i in decodes], device=dev)
                rids = [segments[i].rid for i in decodes]
                if self._triton is not None:
                    kb, vb, tables = store.decode_view(li, rids)
                    attn[idx] = self._triton(q[idx], kb, vb, tables, ctx, self.scale)
                else:
                    kk, vv = store.gather(li, rids, int(ctx.max()))
                    attn[idx] = attention_padded(q[idx][:, None], kk, vv, (ctx - 1)[:, None], ctx, self.scale)[:, 0]
            for i, seg in enumerate(segments):
                if len(seg.tokens) == 1:
                    continue
                a, b = offsets[i], offsets[i + 1]
                end = seg.start + len(seg.tokens)
                kk, vv = store.gather(li, [seg.rid], end)
                attn[a:b] = attention_padded(q[a:b][None], kk, vv, positions[a:b][None],
                                             torch.tensor([end], device=dev), self.scale)[0]
            x = x + attn.reshape(-1, s.heads * s.head_dim) @ w["o"]
            h = F.rms_norm(x, (s.hidden,), w["ln2"], eps=1e-5)
            gate, up = (h @ w["gate_up"]).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ w["down"]
        sampled = [i for i, seg in enumerate(segments) if seg.sample]
        if not sampled:
            return {}
        last = torch.tensor([offsets[i + 1] - 1 for i in sampled], device=dev)
        logits = F.rms_norm(x[last], (s.hidden,), self.final_norm, eps=1e-5) @ self.lm_head
        out = logits.argmax(dim=-1).tolist()
        return {segments[i].rid: int(t) for i, t in zip(sampled, out)}
