"""Saving figures: every figure as PNG (for reading) and SVG (for papers), byte-identical from
run to run so `simkv reproduce` can regenerate docs/ without spurious changes."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from simkv.safe_paths import plain_name, write_file  # noqa: E402

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
