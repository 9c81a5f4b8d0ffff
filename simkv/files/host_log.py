"""`simkv fit-host-overhead STEPLOG.csv`: fit the host-overhead model (simkv.features.host_overhead) to a
step log (an input edge).

Columns: `num_seqs` (sequences in the step) and either `host_ms` (the CPU time the GPU waited
for) or both `step_ms` (wall time of the step) and `gpu_ms` (its GPU time; host = step - gpu).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from simkv.errors import SimkvError
from simkv.features.host_overhead import HostFit, fit_host_overhead

FIX = "columns num_seqs and host_ms (or step_ms and gpu_ms), one step per line"


def read_step_log(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(sequences per step, host seconds per step) of a step log."""
    path, name = Path(path), str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SimkvError(f"cannot read the step log: {getattr(err, 'strerror', None) or err}", file=name, fix=FIX) from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    direct = "host_ms" in header
    if "num_seqs" not in header or not (direct or {"step_ms", "gpu_ms"} <= set(header)):
        raise SimkvError(f"the header is {','.join(header) or 'empty'}", file=name, fix=FIX)
    seqs, host = [], []
    for line, row in enumerate(reader, start=2):
        try:
            n = float(row["num_seqs"])
            h = float(row["host_ms"]) if direct else float(row["step_ms"]) - float(row["gpu_ms"])
        except (TypeError, ValueError):
            raise SimkvError(f"line {line}: not a number in {dict(row)}", file=name, fix=FIX) from None
        if not (math.isfinite(n) and math.isfinite(h)) or n < 0 or n != int(n):
            raise SimkvError(f"line {line}: num_seqs {n:g}, host {h:g} ms", file=name,
                             fix="num_seqs is a whole number >= 0 and the times are finite")
        if h < 0:
            raise SimkvError(f"line {line}: host time {h:g} ms is negative (step_ms < gpu_ms)", file=name,
                             fix="log the step's wall time and its GPU time from the same clock")
        seqs.append(n)
        host.append(h / 1e3)
    if len(seqs) < 2 or len(set(seqs)) < 2:
        raise SimkvError(f"{len(seqs)} step(s) with {len(set(seqs))} distinct num_seqs", file=name,
                         fix="log steps of at least two different batch sizes (the fit has two terms)")
    return np.array(seqs), np.array(host)


def fit_file(path: str | Path) -> HostFit:
    return fit_host_overhead(*read_step_log(path))
