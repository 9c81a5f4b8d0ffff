"""Operator timing models from the calibration tables: GEMMs, attention, elementwise kernels.

Models (times are isolated-operator medians, as measured):
- GEMM: a measured (k, n, dtype) shape interpolates its table over m. An unmeasured shape is the
  roofline time divided by an efficiency (roofline / measured) taken from the measured shapes of
  the same dtype at the same m, averaged with weights that fall off with the distance in log(k*n).
- Decode attention depends only on P = sequences x KV heads and the context (the tables of three
  models with different KV-head counts agree within 3% at equal P); head_dim scales the context.
  A ragged batch costs the sum over sequences of each one's share of a uniform batch at its own
  context: sum_r T(P, c_r) / B.
- Prefill attention (causal, no cache) depends on query heads and tokens; other head counts
  interpolate in log(heads) or scale in proportion outside the measured ones. A chunk against a
  cached context scales the measured non-causal chunk time by the causal fraction of its
  query-key pairs, never below a plain prefill of the chunk.
- Elementwise kernels: a measured (op, width) interpolates its table over m; otherwise the op's
  time as a function of elements (m x width), pooled over the measured models.
Simplifications: head_dim 128 was the only one measured; other head dims are scaled by bytes.
"""

from __future__ import annotations

import numpy as np

from simkv.cost import exact_fit
from simkv.cost.curves import LogCurve, blend_log

ACT_BYTES = 2
DTYPE_KEYS = {"bf16": "bfloat16", "fp16": "bfloat16", "fp8": "fp8_e4m3", "int4": "int4_w4a16"}
# int4_w4a16: 4-bit weights with group scales, bf16 activations and tensor cores (not measured)
WEIGHT_BYTES = {"bfloat16": 2, "fp8_e4m3": 1, "int4_w4a16": 0.5 + 2.5 / 128}
UNMEASURED_DTYPES = {"int4_w4a16": "bfloat16"}  # dtype -> the measured dtype whose efficiency it borrows


class GemmModel:
    """Time of x[m, k] @ w[k, n] in a given dtype."""

    def __init__(self, gemm: dict, flops_per_s: dict[str, float], bytes_per_s: float) -> None:
        self.flops, self.bw = flops_per_s, bytes_per_s
        self.curves: dict[tuple[int, int, str], LogCurve] = {}
        for key in sorted({(int(k), int(n), str(d)) for k, n, d in zip(gemm["k"], gemm["n"], gemm["dtype"])}):
            sel = (gemm["k"] == key[0]) & (gemm["n"] == key[1]) & (gemm["dtype"] == key[2])
            self.curves[key] = LogCurve(gemm["m"][sel], gemm["s"][sel])

    def roofline(self, m, k: int, n: int, dtype: str) -> np.ndarray:
        wb = WEIGHT_BYTES[dtype]
        m = np.asarray(m, float)
        flops = 2.0 * m * k * n
        in_bytes = ACT_BYTES if dtype in UNMEASURED_DTYPES else wb  # W4A16 reads bf16 activations
        moved = k * n * wb + m * k * in_bytes + m * n * ACT_BYTES
        return np.maximum(flops / self.flops[dtype], moved / self.bw)

    def time(self, m, k: int, n: int, dtype: str) -> np.ndarray:
        """Seconds for each m."""
        key = (k, n, dtype)
        if key in self.curves:
            return self.curves[key](m)
        proxy = UNMEASURED_DTYPES.get(dtype)
        if proxy is not None:  # stated model: this dtype's roofline at the measured proxy's efficiency
            return self.roofline(m, k, n, dtype) * self.time(m, k, n, proxy) / self.roofline(m, k, n, proxy)
        return self.roofline(m, k, n, dtype) / self.efficiency(m, k, n, dtype)

    def efficiency(self, m, k: int, n: int, dtype: str) -> np.ndarray:
        """Roofline / measured time expected for shape (k, n), from the measured shapes."""
        shapes = [s for s in self.curves if s[2] == dtype]
        if not shapes:
            raise ValueError(f"no measured {dtype} GEMMs to calibrate against")
        m = np.asarray(m, float)
        target = np.log(k * n)
        logs, weights = [], []
        for sk, sn, _ in shapes:
            eff = self.roofline(m, sk, sn, dtype) / self.curves[(sk, sn, dtype)](m)
            logs.append(np.log(eff))
            weights.append(np.exp(-0.5 * ((np.log(sk * sn) - target) / 0.5) ** 2) + 1e-12)
        w = np.array(weights) / np.sum(weights)
        mix = w[0] * logs[0]
        for wi, li in zip(w[1:], logs[1:]):   # added shape by shape in a fixed order (a tensordot runs on BLAS)
            mix = mix + wi * li
        return np.exp(mix)


class AttentionModel:
    """Prefill, chunk and decode attention times (see module docstring)."""

    def __init__(self, attention: dict, shapes: dict) -> None:
        heads = np.array([shapes[m].heads for m in attention["model"]], float)
        kv_heads = np.array([shapes[m].kv_heads for m in attention["model"]], float)
        kind = attention["kind"]
        dec = kind == "decode"
        p = attention["batch"][dec] * kv_heads[dec]
        self.decode = {}  # P -> curve over context
        for pv in np.unique(p):
            sel = p == pv
            self.decode[float(pv)] = LogCurve(attention["kv_len"][dec][sel], attention["s"][dec][sel])
        self.decode_p = np.array(sorted(self.decode))
        self.prefill = self._by_heads(attention, heads, kind == "prefill", "q_len")
        self.chunk = {}  # heads -> coefficients of t = a q kv + b kv + c, fitted in relative error
        ch = kind == "chunk"
        for h in np.unique(heads[ch]):
            sel = ch & (heads == h)
            q, kv, t = attention["q_len"][sel], attention["kv_len"][sel], attention["s"][sel]
            x = np.c_[q * kv, kv, np.ones_like(q)]
            coef = exact_fit.lstsq(x / t[:, None], np.ones_like(t))   # the same on every CPU
            self.chunk[float(h)] = coef

    @staticmethod
    def _by_heads(attention, heads, mask, col) -> dict[float, LogCurve]:
        return {float(h): LogCurve(attention[col][mask & (heads == h)], attention["s"][mask & (heads == h)])
                for h in np.unique(heads[mask])}

    # ------------------------------------------------------------ decode
    def decode_curve(self, p: float) -> tuple[np.ndarray, np.ndarray]:
        """(context knots, seconds) of a uniform decode batch with P = B x KV heads (read-only
        arrays, made once per P: a run's cost model asks for every batch size up to max_num_seqs,
        and every model built on this calibration shares them)."""
        memo = self.__dict__.setdefault("_decode_memo", {})
        if p not in memo:
            curve = memo[p] = self._decode_curve(p)
            for a in curve:
                a.setflags(write=False)
        return memo[p]

    def _decode_curve(self, p: float) -> tuple[np.ndarray, np.ndarray]:
        ps = self.decode_p
        knots = np.unique(np.concatenate([np.exp(c.lx) for c in self.decode.values()]))
        knots = np.concatenate([knots, [knots[-1] * 4, knots[-1] * 64]])
        if p <= ps[0]:
            return knots, self.decode[ps[0]](knots)
        if p >= ps[-1]:
            return knots, self.decode[ps[-1]](knots) * p / ps[-1]
        i = int(np.searchsorted(ps, p))
        lo, hi = ps[i - 1], ps[i]
        return knots, blend_log(p, lo, self.decode[lo](knots), hi, self.decode[hi](knots))

    def decode_time(self, contexts: np.ndarray, kv_heads: int, head_dim: int) -> float:
        """Seconds of one decode-attention kernel over sequences with these contexts."""
        b = len(contexts)
        knots, secs = self.decode_curve(b * kv_heads)
        c = np.asarray(contexts, float) * head_dim / 128
        return float(np.interp(c, knots, secs).sum() / b)

    # ------------------------------------------------------------ prefill
    def prefill_time(self, new, cached, heads: int, head_dim: int) -> np.ndarray:
        """Seconds of causal attention for `new` tokens after `cached` ones, per sequence."""
        new, cached = np.asarray(new, float), np.asarray(cached, float)
        base = self._per_heads(self.prefill, heads, new) * head_dim / 128
        if not np.any(cached > 0):
            return base
        chunk = self._chunk_time(new, new + cached, heads) * head_dim / 128
        causal = (new * cached + new * (new + 1) / 2) / (new * (new + cached))
        return np.where(cached > 0, np.maximum(base, chunk * causal), base)

    def _per_heads(self, curves: dict[float, LogCurve], heads: int, x) -> np.ndarray:
        hs = sorted(curves)
        if heads <= hs[0] or len(hs) == 1:
            return curves[hs[0]](x) * heads / hs[0]
        if heads >= hs[-1]:
            return curves[hs[-1]](x) * heads / hs[-1]
        i = int(np.searchsorted(hs, heads))
        return blend_log(heads, hs[i - 1], curves[hs[i - 1]](x), hs[i], curves[hs[i]](x))

    def _chunk_time(self, q, kv, heads: int) -> np.ndarray:
        """Non-causal chunk time: nearest measured head count, bilinear in (log q, log kv)."""
        h = min(self.chunk, key=lambda v: abs(np.log(v / heads)))
        a, b, c = self.chunk[h]
        return (a * q * kv + b * kv + c) * heads / h


ELEMENTWISE_OPS = ("rmsnorm", "residual_add", "rope", "silu_mul")


class ElementwiseModel:
    """rmsnorm, residual_add, rope and silu_mul times by token count and width."""

    def __init__(self, elementwise: dict, widths: dict[str, dict[str, int]]) -> None:
        self.measured: dict[tuple[str, int], LogCurve] = {}
        self.pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for op in ELEMENTWISE_OPS:
            xs, ys = [], []
            for model, w in widths.items():
                sel = (elementwise["op"] == op) & (elementwise["model"] == model)
                if sel.any():
                    self.measured[(op, w[op])] = LogCurve(elementwise["m"][sel], elementwise["s"][sel])
                    xs.append(elementwise["m"][sel] * w[op])
                    ys.append(elementwise["s"][sel])
            self.pooled[op] = (np.concatenate(xs), np.concatenate(ys))

    def time(self, op: str, m, width: int) -> np.ndarray:
        key = (op, width)
        if key in self.measured:
            return self.measured[key](m)
        x, y = self.pooled[op]
        return LogCurve(x, y)(np.asarray(m, float) * width)
