"""Mixture-of-experts layer costs: grouped expert GEMMs, the router, shared experts, and the
expert-parallel all-to-all.

Models (one GPU of a replica of `tp` GPUs, a step of T tokens, E experts, top-k routing):
- Routing is balanced unless `imbalance` > 1: T x k token-expert pairs, each active expert holding
  r = ceil(T k / E) rows (the measured tables' convention); min(E, T k) experts are active. With
  imbalance f the busiest expert holds ceil(f r) rows (at most T) once every expert is busy, and
  the grouped GEMM, padded to its busiest expert, takes that long.
- Tensor parallelism (default): every GPU holds every expert with 1/tp of its intermediate width.
  Expert parallelism: every GPU holds E/tp whole experts and computes ceil(active / tp) of them;
  attention stays tensor-parallel.
- A grouped GEMM of a measured shape (`moe_gemm.csv`: model dims, E, k, bf16, one GPU, balanced)
  is its measured time at T. Any other (sharded, imbalanced, expert-parallel, fp8, int4) is its
  roofline max(FLOPs / rate, bytes / bandwidth) over the active experts' weights, divided by the
  efficiency (roofline / measured) the nearest measured shape (in log k n) reaches at the same rows
  per expert: a stated model, labelled as such in `sources()`.
- Router: the nearest measured router shape's time at T. Shared experts: dense GEMMs (gemm.csv).
- All-to-all (expert parallelism): each GPU dispatches T / tp tokens to their k experts, (tp-1)/tp
  of them remote, in bf16, and combines the results back: 2 x T/tp x k x (tp-1)/tp x hidden x 2 bytes
  over NVLink at the GPU's link rate, plus one all-reduce for attention (not measured).
"""

from __future__ import annotations

import numpy as np

from simkv.cost.curves import LogCurve
from simkv.cost.operators import ACT_BYTES, WEIGHT_BYTES, GemmModel
from simkv.specs import ModelSpec, ShardDims

OPS = ("expert_gate_up", "expert_down")


class MoeGemmTable:
    """Measured grouped expert GEMMs and router of one GPU (bf16)."""

    def __init__(self, cols: dict, flops_per_s: dict[str, float], bytes_per_s: float) -> None:
        self.flops, self.bw = flops_per_s, bytes_per_s
        self.shapes: dict[tuple, dict] = {}
        keys = zip(cols["op"], cols["k"], cols["n"], cols["experts_total"], cols["top_k"])
        for key in sorted({(str(o), int(k), int(n), int(e), int(t)) for o, k, n, e, t in keys}):
            op, k, n, e, t = key
            sel = ((cols["op"] == op) & (cols["k"] == k) & (cols["n"] == n) & (cols["experts_total"] == e)
                   & (cols["top_k"] == t))
            tok, act, rows, s = (cols[c][sel] for c in ("tokens", "active_experts", "tokens_per_expert", "s"))
            entry = {"curve": LogCurve(tok, s)}
            if op in OPS:  # efficiency against the bf16 roofline, by rows per expert (log-mean per value)
                eff = self.roofline(act, rows, k, n, "bfloat16") / s
                ur, inv = np.unique(rows, return_inverse=True)
                entry["eff"] = (np.log(ur), np.bincount(inv, weights=np.log(eff)) / np.bincount(inv))
            self.shapes[key] = entry

    def roofline(self, active, rows, k: int, n: int, dtype: str) -> np.ndarray:
        """Seconds of a grouped GEMM over `active` experts with `rows` rows each, at the ceilings."""
        active, rows = np.asarray(active, float), np.asarray(rows, float)
        flops = 2.0 * active * rows * k * n
        moved = active * k * n * WEIGHT_BYTES[dtype] + active * rows * (k + n) * ACT_BYTES
        return np.maximum(flops / self.flops[dtype], moved / self.bw)

    def is_measured(self, op: str, k: int, n: int, experts: int, topk: int) -> bool:
        return (op, k, n, experts, topk) in self.shapes

    def _nearest(self, op: str, k: int, n: int) -> dict:
        cands = [key for key in self.shapes if key[0] == op]
        best = min(cands, key=lambda key: abs(np.log(key[1] * key[2]) - np.log(k * n)))
        return self.shapes[best]

    def expert_time(self, op: str, tokens, k: int, n: int, experts: int, topk: int, *, ep: int = 1,
                    imbalance: float = 1.0, dtype: str = "bfloat16") -> np.ndarray:
        """Seconds of one grouped expert GEMM on one GPU for each token count."""
        t = np.maximum(np.asarray(tokens, float), 1.0)
        key = (op, k, n, experts, topk)
        if key in self.shapes and ep == 1 and imbalance == 1.0 and dtype == "bfloat16":
            return self.shapes[key]["curve"](t)
        pairs = t * topk
        rows = np.ceil(pairs / experts)
        if imbalance > 1.0:
            rows = np.where(pairs >= experts, np.minimum(np.ceil(rows * imbalance), t), rows)
        active = np.ceil(np.minimum(experts, pairs) / ep)
        ref = self.shapes[key] if key in self.shapes else self._nearest(op, k, n)
        lr, le = ref["eff"]
        eff = np.exp(np.interp(np.log(rows), lr, le))
        return self.roofline(active, rows, k, n, dtype) / eff

    def router_time(self, tokens, hidden: int, experts: int, topk: int) -> np.ndarray:
        key = ("router_topk", hidden, experts, experts, topk)
        if key in self.shapes:
            return self.shapes[key]["curve"](np.maximum(np.asarray(tokens, float), 1.0))
        return self._nearest("router_topk", hidden, experts)["curve"](np.maximum(np.asarray(tokens, float), 1.0))


class MoeLayer:
    """Isolated-operator times of the MLP part of one MoE layer on one GPU, by tokens in the step."""

    def __init__(self, table: MoeGemmTable, gemm: GemmModel, model: ModelSpec, tp: int, *, dtype: str,
                 expert_parallel: bool = False, imbalance: float = 1.0) -> None:
        m = model.moe
        self.table, self.gemm, self.m, self.tp, self.dtype = table, gemm, m, tp, dtype
        self.ep = tp if expert_parallel else 1
        tpe = 1 if expert_parallel else tp  # tensor-parallel split of each expert's width
        self.hidden = model.hidden_size
        inter = -(-m.expert_intermediate_size // tpe)
        self.gate_up = (self.hidden, 2 * inter if model.mlp == "gated" else inter)
        self.down = (inter, self.hidden)
        sh = -(-m.shared_intermediate // tp)
        self.shared = [(self.hidden, 2 * sh if model.mlp == "gated" else sh), (sh, self.hidden)] if m.shared_experts else []
        self.imbalance = imbalance
        # activated MLP width per token on this GPU (elementwise traffic, activation memory)
        self.active_width = -(-(m.experts_per_token * m.expert_intermediate_size) // tp) + m.shared_experts * sh

    def measured(self) -> bool:
        """Every expert GEMM is a measured shape at its measured conditions."""
        m = self.m
        return (self.ep == 1 and self.imbalance == 1.0 and self.dtype == "bfloat16"
                and all(self.table.is_measured(op, k, n, m.num_experts, m.experts_per_token)
                        for op, (k, n) in zip(OPS, (self.gate_up, self.down))))

    def experts(self, tokens) -> np.ndarray:
        m = self.m
        kw = dict(ep=self.ep, imbalance=self.imbalance, dtype=self.dtype)
        return (self.table.expert_time("expert_gate_up", tokens, *self.gate_up, m.num_experts, m.experts_per_token, **kw)
                + self.table.expert_time("expert_down", tokens, *self.down, m.num_experts, m.experts_per_token, **kw))

    def router(self, tokens) -> np.ndarray:
        return self.table.router_time(tokens, self.hidden, self.m.num_experts, self.m.experts_per_token)

    def shared_experts(self, tokens) -> np.ndarray:
        t = np.maximum(np.asarray(tokens, float), 1.0)
        total = np.zeros_like(t)
        for k, n in self.shared:
            total = total + self.m.shared_experts * self.gemm.time(t, k, n, self.dtype)
        return total

    def linear(self, tokens) -> np.ndarray:
        """Expert GEMMs + router + shared experts (isolated times)."""
        return self.experts(tokens) + self.router(tokens) + self.shared_experts(tokens)

    def all_to_all_bytes(self, tokens) -> np.ndarray:
        """Bytes one GPU sends for dispatch plus combine (0 without expert parallelism)."""
        if self.ep == 1:
            return np.zeros_like(np.asarray(tokens, float))
        t = np.asarray(tokens, float)
        return 2.0 * t / self.ep * self.m.experts_per_token * (self.ep - 1) / self.ep * self.hidden * ACT_BYTES


def moe_shard(d: ShardDims, layer: MoeLayer) -> ShardDims:
    """The shard of an MoE layer for elementwise traffic: the activated experts' width as the MLP."""
    return d.model_copy(update={"intermediate": layer.active_width})


def moe_sources(layer: MoeLayer, gpu: str, c_lin: float, link_gbps: float) -> dict[str, str]:
    m = layer.m
    how = ("measured: " + gpu + " moe_gemm.csv grouped expert GEMMs (balanced routing, bf16)" if layer.measured() else
           "scaled (not measured): roofline of the active experts' weights over the " + gpu + " moe_gemm.csv "
           "efficiency of the nearest measured shape at the same rows per expert ("
           + ", ".join(x for x in ("expert-parallel" if layer.ep > 1 else "", "sharded" if layer.tp > 1 and layer.ep == 1 else "",
                                   f"imbalance {layer.imbalance:g}" if layer.imbalance != 1 else "",
                                   layer.dtype if layer.dtype != "bfloat16" else "") if x) + ")")
    out = {
        "moe_experts": f"{how}; {m.num_experts} experts, top-{m.experts_per_token} x fitted graph factor {c_lin:.3f}",
        "moe_router": f"measured: {gpu} moe_gemm.csv router_topk (nearest measured shape) x fitted graph factor {c_lin:.3f}",
        "moe_shared_experts": (f"{gpu} GEMM tables (dense shapes, see gemm) x fitted graph factor {c_lin:.3f}"
                               if m.shared_experts else "n/a (no shared experts)"),
        "moe_all_to_all": (f"roofline (not measured): dispatch + combine of T/{layer.ep} x top-{m.experts_per_token} "
                           f"tokens over NVLink at {link_gbps:g} GB/s (no all-to-all profile shipped)"
                           if layer.ep > 1 else "n/a (no expert parallelism)"),
    }
    return out


def roofline_moe_linear_s(m: int, layer: MoeLayer, wb: float, flops_per_s: float, bytes_per_s: float) -> float:
    """The roofline of an MoE layer's expert, router-free and shared-expert GEMMs for m tokens."""
    e = layer.m
    t = max(m, 1)
    pairs = t * e.experts_per_token
    rows = -(-pairs // e.num_experts)
    if layer.imbalance > 1.0 and pairs >= e.num_experts:
        rows = min(int(np.ceil(rows * layer.imbalance)), t)
    active = -(-min(e.num_experts, pairs) // layer.ep)
    total = 0.0
    for k, n in (layer.gate_up, layer.down):
        total += max(2.0 * active * rows * k * n / flops_per_s,
                     (active * k * n * wb + active * rows * (k + n) * ACT_BYTES) / bytes_per_s)
    for k, n in layer.shared:
        total += e.shared_experts * max(2.0 * t * k * n / flops_per_s, (k * n * wb + t * (k + n) * ACT_BYTES) / bytes_per_s)
    return total
