"""Saving figures: every figure as PNG (for reading) and SVG (for papers), byte-identical from
run to run so `simkv reproduce` can regenerate docs/ without spurious changes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# no dates, no library versions, fixed SVG element ids: the bytes depend only on the figure
_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


def save_figure(fig, folder: Path, stem: str, formats: tuple[str, ...] = ("png", "svg")) -> list[str]:
    """Write `stem.png` and `stem.svg` into `folder`, close the figure; the file names."""
    names = []
    with plt.rc_context({"svg.hashsalt": "simkv", "svg.fonttype": "path"}):
        for ext in formats:
            fig.savefig(Path(folder) / f"{stem}.{ext}", dpi=110, metadata=_METADATA[ext])
            names.append(f"{stem}.{ext}")
    plt.close(fig)
    return names
