"""Step times from the user's own measurements (`cost: {table: steps.csv}`): a table of measured
step shapes and milliseconds, interpolated. The CSV is read by the input layer
(simkv.files.step_table); this module holds arrays only.

Each step is reduced to the two numbers its time depends on (one for the GEMMs, one for attention):

    decode-only step   (b decodes, contexts c_i):             (b,  K = sum c_i)           KV tokens read
    prefill-only step  (n_i new tokens at context L_i):        (T = sum n_i, W = sum pairs_i)
                        pairs_i = n_i (L_i - n_i) + n_i (n_i + 1) / 2   causal query-key pairs

so a row `decode_batch=b, decode_ctx=c` is the point (b, b c), and a row of `prefill_seqs=s`
prompts of `prefill_len=L` (`tokens_per_seq=n` new tokens each, default L: whole prompts) is
(s n, s pairs). Inside the convex hull of the table's points the time is the piecewise-linear
(Delaunay) interpolant of the measured times (exact at every row; the axes rescaled to unit range).
Outside it (`extrapolate: linear`, the default) the time is the nearest row's time plus the change
of a least-squares plane a + x1 * u + x2 * v fitted to the same surface; every such step is
counted and reported in the summary's cost sources. `extrapolate: reject` stops the run at the
first step outside the table instead.

Mixed steps (prefills and decodes together) are composed: the prefill surface at (T + b, W) (the
decodes' tokens ride along in the GEMMs) plus the decode plane's per-KV-token slope x K (their
attention); when the table has mixed rows, the composition is multiplied by the median ratio of
their measured to composed times. Swap traffic comes from the base cost model (GPU copy rates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simkv.cost import exact_fit
from simkv.errors import SimkvError
from simkv.sched.base import StepPlan

COLUMNS = ("prefill_seqs", "prefill_len", "decode_batch", "decode_ctx", "ms")
OPTIONAL = ("tokens_per_seq",)


@dataclass(frozen=True)
class StepRows:
    """A measured step table, as arrays (one entry per row)."""

    prefill_seqs: np.ndarray
    prefill_len: np.ndarray
    decode_batch: np.ndarray
    decode_ctx: np.ndarray
    tokens_per_seq: np.ndarray   # new tokens per prefill sequence (= prefill_len for whole prompts)
    ms: np.ndarray
    origin: str = "step table"   # file name, for messages

    def __len__(self) -> int:
        return len(self.ms)


def causal_pairs(new: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """Query-key pairs of a causal prefill of `new` tokens ending at context `ctx`."""
    new, ctx = np.asarray(new, dtype=float), np.asarray(ctx, dtype=float)
    return new * (ctx - new) + new * (new + 1) / 2


class Surface:
    """Piecewise-linear interpolation of scattered 2-D points, plane-corrected outside the hull."""

    def __init__(self, x: np.ndarray, y: np.ndarray, t: np.ndarray) -> None:
        pts, t = _unique_mean(np.column_stack([x, y]).astype(float), np.asarray(t, dtype=float))
        self.scale = np.maximum(pts.max(axis=0), 1.0)
        self.pts, self.t = pts / self.scale, t
        design = np.column_stack([np.ones(len(pts)), self.pts])
        self.plane = exact_fit.lstsq(design, self.t)   # the same on every CPU (simkv.cost.exact_fit)
        self.interp = None
        if len(pts) >= 3:
            try:
                from scipy.interpolate import LinearNDInterpolator
                self.interp = LinearNDInterpolator(self.pts, self.t)
            except Exception:   # collinear points (scipy's Qhull error): no hull, plane only
                self.interp = None

    def slope(self, axis: int) -> float:
        """The plane's time per unit of one axis (original units), at least 0."""
        return max(float(self.plane[1 + axis]) / float(self.scale[axis]), 0.0)

    def __call__(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(times, outside-the-hull mask) at points (x, y)."""
        q = np.column_stack([np.atleast_1d(x), np.atleast_1d(y)]).astype(float) / self.scale
        out = np.full(len(q), np.nan) if self.interp is None else np.asarray(self.interp(q), dtype=float).reshape(-1)
        missing = np.flatnonzero(np.isnan(out))
        if len(missing):   # a measured row itself (on the hull's edge the interpolant may miss it), else outside
            far = q[missing]
            dist = ((far[:, None, :] - self.pts[None, :, :]) ** 2).sum(axis=2)
            near = np.argmin(dist, axis=1)
            exact = dist[np.arange(len(missing)), near] <= 1e-24
            out[missing] = self.t[near] + np.where(exact, 0.0, exact_fit.matvec(far - self.pts[near], self.plane[1:]))
            outside = np.zeros(len(q), bool)
            outside[missing[~exact]] = True
        else:
            outside = np.zeros(len(q), bool)
        return np.maximum(out, 0.0), outside


@dataclass
class TableUse:
    """Steps priced from the table, and how many of them lay outside its shapes."""

    steps: int = 0
    extrapolated: int = 0
    worst: tuple = field(default_factory=tuple)   # the first extrapolated step's shape


class StepTableCost:
    """StepCost from a user's measured step table (see module docstring)."""

    decode_attention_scale = 1.0   # set by the builder; the user's kernels are what they measured
    # scipy's interpolator walks from the previous point's triangle, so a point on a shared edge can
    # take the other triangle's value (last bit) when timed in another call: the engine times a
    # run whole (StepCost.decode_run_seconds)
    decode_runs_split_exactly = False

    def __init__(self, rows: StepRows, base, *, host_overhead_s: float = 0.0, host_per_seq_s: float = 0.0,
                 extrapolate: str = "linear", host_in_table: bool = False) -> None:
        self.rows, self.base, self.extrapolate = rows, base, extrapolate
        self.host_overhead_s, self.host_per_seq_s = host_overhead_s, host_per_seq_s
        self.host_in_table = host_in_table
        s = rows.ms / 1e3
        dec = (rows.prefill_seqs == 0) & (rows.decode_batch > 0)
        pre = (rows.prefill_seqs > 0) & (rows.decode_batch == 0)
        mix = (rows.prefill_seqs > 0) & (rows.decode_batch > 0)
        if not dec.any() or not pre.any():
            what = "decode-only (prefill_seqs 0)" if not dec.any() else "prefill-only (decode_batch 0)"
            raise SimkvError(f"the table has no {what} rows, and every run needs both kinds of step",
                             file=rows.origin, field="cost.table",
                             fix="add measured rows of that kind (see docs/cost-model.md, 'Your own step table')")
        b, c = rows.decode_batch.astype(float), rows.decode_ctx.astype(float)
        n, L, ps = rows.tokens_per_seq.astype(float), rows.prefill_len.astype(float), rows.prefill_seqs.astype(float)
        self.decode = Surface(b[dec], (b * c)[dec], s[dec])
        self.prefill = Surface((ps * n)[pre], (ps * causal_pairs(n, L))[pre], s[pre])
        self.num_rows = (int(dec.sum()), int(pre.sum()), int(mix.sum()))
        self.mixed_factor = 1.0
        if mix.any():
            composed = self._mixed(ps[mix] * n[mix], ps[mix] * causal_pairs(n[mix], L[mix]), b[mix], (b * c)[mix])[0]
            self.mixed_factor = float(np.median(s[mix] / np.maximum(composed, 1e-12)))
        self.use = TableUse()
        self._last_run: tuple[np.ndarray, np.ndarray] | None = None   # (contexts, outside mask) of the last run timed

    # ------------------------------------------------------------ the table's surfaces
    def _mixed(self, T, W, b, K):
        t, outside = self.prefill(np.asarray(T) + np.asarray(b), W)
        return t + self.decode.slope(1) * np.asarray(K, dtype=float), outside

    def table_seconds(self, plan: StepPlan) -> tuple[float, bool]:
        """(the table's time of the step's computation, whether it lay outside the table)."""
        b = len(plan.decode_ids)
        K = float(plan.decode_ctx.sum()) if b else 0.0
        if not len(plan.prefill_ids):
            t, out = self.decode(b, K)
            return float(t[0]), bool(out[0])
        T = float(plan.prefill_new.sum())
        W = float(causal_pairs(plan.prefill_new, plan.prefill_ctx).sum())
        if not b:
            t, out = self.prefill(T, W)
            return float(t[0]), bool(out[0])
        t, out = self._mixed(T, W, b, K)
        return float(t[0]) * self.mixed_factor, bool(out[0])

    def _host_s(self, num_seqs: int) -> float:
        return 0.0 if self.host_in_table else self.host_overhead_s + self.host_per_seq_s * num_seqs

    def _count(self, steps: int, outside: np.ndarray, shape) -> None:
        self.use.steps += steps
        k = int(np.count_nonzero(outside))
        if k and not self.use.extrapolated:
            self.use.worst = shape
        self.use.extrapolated += k
        if k and self.extrapolate == "reject":
            raise SimkvError(f"a step of {shape} lies outside the shapes your step table measured",
                             file=self.rows.origin, field="cost.table",
                             fix="add rows around that shape to the table, or set cost.extrapolate: linear "
                                 "(nearest measured row + a fitted plane)")

    # ------------------------------------------------------------ StepCost
    def seconds(self, plan: StepPlan) -> float:
        swap = self.base.transfer_seconds(plan) if hasattr(self.base, "transfer_seconds") else 0.0
        if plan.num_batched_tokens == 0:
            return self._host_s(0) + swap
        t, out = self.table_seconds(plan)
        self._count(1, np.array([out]), _shape(plan))
        return t + self._host_s(plan.num_seqs) + swap

    def _decode_run(self, decode_ctx: np.ndarray, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        b = len(decode_ctx)
        K = float(decode_ctx.sum()) + b * np.arange(num_steps, dtype=float)
        return self.decode(np.full(num_steps, b, dtype=float), K)

    def decode_run_seconds(self, decode_ctx: np.ndarray, num_steps: int) -> np.ndarray:
        """The run's step times; not counted in `use` (the engine may time steps it then cuts at an
        arrival): the engine counts the steps it simulates through `decode_run_ran`."""
        t, out = self._decode_run(decode_ctx, num_steps)
        self._last_run = (decode_ctx, out)   # which of these steps lay outside: for decode_run_ran
        return t + self._host_s(len(decode_ctx))

    def decode_run_ran(self, decode_ctx: np.ndarray, num_steps: int) -> None:
        """The first `num_steps` steps of a decode run from `decode_ctx` were simulated: count them
        (and, under extrapolate: reject, refuse one outside the table), with the outside mask of
        the call that timed them (the engine times a step table's run in one call, just before)."""
        last = self._last_run
        if last is not None and last[0] is decode_ctx and len(last[1]) >= num_steps:
            out = last[1][:num_steps]
        else:
            out = self._decode_run(decode_ctx, num_steps)[1]
        b = len(decode_ctx)
        self._count(num_steps, out, f"{b} decodes at mean context {float(decode_ctx.mean()):.0f}" if b else "empty")

    def swap_seconds(self, num_tokens: int, to_host: bool) -> float:
        return self.base.swap_seconds(num_tokens, to_host)

    def transfer_seconds(self, plan: StepPlan) -> float:
        return self.base.transfer_seconds(plan)

    # ------------------------------------------------------------ provenance
    def sources(self) -> dict[str, str]:
        d, p, m = self.num_rows
        u = self.use
        where = (f"; {u.extrapolated} of {u.steps} steps ({100 * u.extrapolated / max(u.steps, 1):.1f}%) lay outside "
                 f"the table's shapes and were extrapolated (nearest row + fitted plane; first: {u.worst})"
                 if u.extrapolated else f"; all {u.steps} steps inside the table's shapes")
        mixed = (f"composed prefill + decode attention x {self.mixed_factor:.3f} (median measured/composed of "
                 f"{m} mixed rows)" if m else "composed prefill + decode attention (no mixed rows measured)")
        base = {k: v for k, v in (self.base.sources().items() if hasattr(self.base, "sources") else ())}
        out = {
            "step_table": f"user table: {self.rows.origin} ({d} decode, {p} prefill, {m} mixed rows), piecewise-linear "
                          f"interpolation{where}",
            "decode_steps": "user table: decode rows interpolated over (batch, KV tokens read)",
            "prefill_steps": "user table: prefill rows interpolated over (tokens, causal attention pairs)",
            "mixed_steps": f"user table: {mixed}",
            "swap": base.get("swap", "n/a"),
        }
        out["host_overhead"] = ("user table: included in the measured step times (cost.host_in_table)"
                                if self.host_in_table else base.get("host_overhead", "assumed 0"))
        return out


def _unique_mean(pts: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repeated shapes (several measurements of one step) become one point at their mean time."""
    uniq, inv = np.unique(pts, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    return uniq, np.bincount(inv, weights=t) / np.bincount(inv)


def _shape(plan: StepPlan) -> str:
    parts = []
    if len(plan.prefill_ids):
        parts.append(f"{len(plan.prefill_ids)} prefills of {int(plan.prefill_new.sum())} new tokens "
                     f"(context up to {int(plan.prefill_ctx.max())})")
    if len(plan.decode_ids):
        parts.append(f"{len(plan.decode_ids)} decodes at mean context {float(plan.decode_ctx.mean()):.0f}")
    return " + ".join(parts) or "an empty step"
