"""What a whole-model forward adds or saves over `layers` x one graph-replayed layer + lm_head.

Composing one measured layer L times misses two things that `model_steps.csv` (whole Llama-3-8B
forwards captured in one CUDA graph) shows:

- **graph overhead per layer** (saved): a single-layer graph replay pays a fixed launch/teardown
  cost that the layer correction's constant c_0 absorbs; a whole-model graph pays it once per step,
  so composing L layers counts it L - 1 times too often. Term: -(L - 1) * g, 0 <= g <= c_0.
- **activation traffic per token** (added): long prefills run 7-10% slower as a whole model than as
  L replays of one layer (the layer's activations no longer stay in L2 between replays). Term:
  L * a * m * elementwise_bytes_per_token / BW, a >= 0, with m the step's tokens; it scales with the
  shard's per-token elementwise bytes, so it carries over to other model shapes and TP shards.

The two coefficients are fitted in relative error on the residual of the layer composition (with
the layer correction fitted on `layer_steps.csv` beforehand); no per-row lookup.
Simplification: fitted on one model (32 layers), so the per-layer saving and a per-step constant
cannot be told apart; the per-layer form is the physical one (a graph per layer vs one per step).
"""

from __future__ import annotations

import numpy as np

from simkv.cost import exact_fit
from simkv.cost.tables import CalibrationTables
from simkv.cost.layer import LayerCosts, OperatorSet, calibration_shapes, layer_features, per_token_bytes

WHOLE_FEATURES = ("graph_saving_per_layer_s", "activation_bytes_factor")


def composed_and_features(tables: CalibrationTables, ops: OperatorSet, coef: np.ndarray, bytes_per_s: float,
                          rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(layers x layer + lm_head, whole-model feature matrix) for the rows of model_steps.csv."""
    M, shapes = tables.model_steps, calibration_shapes(tables)
    idx = np.flatnonzero(rows) if rows is not None else np.arange(len(M["s"]))
    composed, feats = [], []
    for i in idx:
        d = shapes[str(M["model"][i])]
        lc = LayerCosts(ops, d)
        ps, pl = int(M["prefill_seqs"][i]), int(M["prefill_len"][i])
        b, c = int(M["decode_batch"][i]), int(M["decode_ctx"][i])
        layers = int(M["layers"][i])
        att = ps * float(lc.prefill_attention(pl, 0)) if ps else 0.0
        att += lc.decode_attention(np.full(b, c)) if b else 0.0
        m = ps * pl + b
        layer = exact_fit.dot(layer_features(lc, bytes_per_s, m, att), coef)
        composed.append(layers * layer + coef[0] * float(lc.lm_head(ps + b)))
        feats.append(whole_features(layers, m, per_token_bytes(d)[1], bytes_per_s))
    return np.array(composed), np.array(feats)


def whole_features(layers: int, m: float, ew_bytes_per_token: float, bytes_per_s: float) -> np.ndarray:
    return np.array([-(layers - 1.0), layers * m * ew_bytes_per_token / bytes_per_s])


def fit_whole_model(composed: np.ndarray, features: np.ndarray, measured: np.ndarray, c0: float) -> np.ndarray:
    """(g, a): bounded least squares, in relative error, of measured - composed on the features
    (exactly, so the same on every CPU: simkv.cost.exact_fit)."""
    return exact_fit.bounded_lstsq(features / measured[:, None], 1 - composed / measured,
                                   [0.0, 0.0], [max(c0, 1e-12), np.inf])


def whole_model_coef(tables: CalibrationTables, ops: OperatorSet, coef: np.ndarray, bytes_per_s: float,
                     rows: np.ndarray | None = None) -> np.ndarray:
    """The fitted (g, a) of a GPU, or zeros when it has no whole-model measurements."""
    if tables.model_steps is None or not len(tables.model_steps["s"]):
        return np.zeros(2)
    composed, feats = composed_and_features(tables, ops, coef, bytes_per_s, rows)
    y = tables.model_steps["s"] if rows is None else tables.model_steps["s"][rows]
    return fit_whole_model(composed, feats, y, float(coef[4]))
