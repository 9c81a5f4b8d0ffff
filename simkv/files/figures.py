"""Saving figures: every figure as PNG (for reading) and SVG (for papers), byte-identical from
run to run so `simkv reproduce` can regenerate docs/ without spurious changes."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.scale import LogScale, LogTransform, register_scale  # noqa: E402


class _RoundedLogTransform(LogTransform):
    """log10 rounded to 1e-9 decades. numpy's SIMD log10 differs in the last bit between CPUs
    (AVX-512 and AVX2 code paths), enough to move a line's pixels on log axes, so a figure
    regenerated on another machine had other bytes; rounded, the coordinates are the same."""

    def transform_non_affine(self, values):
        return np.round(super().transform_non_affine(values), 9)


class _DeterministicLogScale(LogScale):
    """`set_xscale("log")` with the rounded transform (registered under the name "log")."""

    def __init__(self, axis=None, **kwargs) -> None:
        super().__init__(axis, **kwargs)
        self._transform = _RoundedLogTransform(self._transform.base, "clip" if self._transform._clip else "mask")


with warnings.catch_warnings():      # matplotlib >= 3.11 notes the (still supported) `axis` argument
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    register_scale(_DeterministicLogScale)

from simkv.files.safe_paths import plain_name, write_file  # noqa: E402

# no dates, no library versions, fixed SVG element ids: the bytes depend only on the figure
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


def save_figure(fig, folder: Path, stem: str, formats: tuple[str, ...] = ("png", "svg"),
                root: Path | None = None) -> list[str]:
    """Write `stem.png` and `stem.svg` into `folder` (atomically, never through a symbolic link;
    `root`: the results folder, default `folder`), close the figure; the file names."""
    names = []
    try:
        with plt.rc_context({"svg.hashsalt": "simkv", "svg.fonttype": "path"}):
            for ext in formats:
                name = plain_name(f"{stem}.{ext}", file=str(folder), field="figure")
                buffer = io.BytesIO()
                fig.savefig(buffer, format=ext, dpi=110, metadata=_METADATA[ext])
                write_file(Path(folder) / name, buffer.getvalue(), root=root if root is not None else folder)
                names.append(name)
    finally:
        plt.close(fig)
    return names
