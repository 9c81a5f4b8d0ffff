"""Reading a user's measured step table (`cost: {table: steps.csv}`), an input edge: the CSV is
checked row by row here and handed to simkv.cost.step_table as arrays.

Columns (header names, any order, extra columns ignored):
    prefill_seqs, prefill_len, decode_batch, decode_ctx   the shape, as `simkv step-time --batches`
    tokens_per_seq   optional: new tokens each prefill sequence computes (a chunk); empty or absent:
                     prefill_len (whole prompts). prefill_len is the context after the step.
    ms               the measured step time (milliseconds), for the scenario's model, GPU and TP
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from simkv.cost.step_table import COLUMNS, StepRows
from simkv.errors import SimkvError

MAX_ROWS = 1_000_000
MAX_SHAPE = 2 ** 31   # sequences or tokens of one step
MAX_MS = 1e7          # ms: the engine's plausible-step bound
_CACHE: dict[tuple, StepRows] = {}
FIX_COLUMNS = "the header must hold " + ",".join(COLUMNS) + " (optional tokens_per_seq); see docs/cost-model.md"


def read_step_table(path: str | Path) -> StepRows:
    """The table at `path` as StepRows (cached per file and modification time)."""
    path = Path(path)
    name = str(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise SimkvError(f"cannot read the step table {name}: {err.strerror or err}", file=name, field="cost.table",
                         fix="give a CSV file, relative to the scenario file") from None
    if not path.is_file():
        raise SimkvError(f"the step table {name} is not a file", file=name, field="cost.table", fix="give a CSV file")
    key = (os.path.abspath(name), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        _CACHE[key] = _parse(path)
    return _CACHE[key]


def _parse(path: Path) -> StepRows:
    name = str(path)

    def bad(problem: str, fix: str = FIX_COLUMNS):
        return SimkvError(f"step table {path.name}: {problem}", file=name, field="cost.table", fix=fix)

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise bad(f"cannot read the step table: {err}", "save it as a UTF-8 CSV") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise bad(f"missing column(s) {', '.join(missing)}")
    reader.fieldnames = header
    cols = {c: [] for c in COLUMNS + ("tokens_per_seq",)}
    for line, row in enumerate(reader, start=2):
        if len(cols["ms"]) >= MAX_ROWS:
            raise bad(f"more than {MAX_ROWS} rows", "keep one row per measured shape")
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        vals = {}
        for c in COLUMNS + ("tokens_per_seq",):
            raw = (row.get(c) or "").strip()
            if c == "tokens_per_seq" and not raw:
                vals[c] = None
                continue
            try:
                v = float(raw)
            except ValueError:
                raise bad(f"line {line}: {c} is {raw!r}, not a number", "fill every cell with a number") from None
            if not math.isfinite(v) or v < 0 or (c != "ms" and (v != int(v) or v > MAX_SHAPE)) or v > MAX_MS:
                raise bad(f"line {line}: {c} is {raw!r}",
                          f"shape columns are whole numbers 0..{MAX_SHAPE}; ms is a finite time > 0 (ms)")
            vals[c] = v
        ps, pl, db, dc, ms = (vals[c] for c in COLUMNS)
        if (ps > 0) != (pl > 0) or (db > 0) != (dc > 0) or not (ps or db):
            raise bad(f"line {line}: {ps:g} x {pl:g} prefill + {db:g} decodes at {dc:g} is not a step",
                      "prefill_seqs and prefill_len are both 0 or both positive; same for decode_batch and "
                      "decode_ctx; a step has a prefill or decodes")
        if ms <= 0:
            raise bad(f"line {line}: ms is {ms:g}", "a measured step takes more than 0 ms")
        n = vals["tokens_per_seq"]
        if n is not None and (not ps or not 1 <= n <= pl):
            raise bad(f"line {line}: tokens_per_seq {n:g} with prefill_seqs {ps:g}, prefill_len {pl:g}",
                      "tokens_per_seq is the new tokens of each prefill sequence: 1..prefill_len, "
                      "empty without prefills")
        for c in COLUMNS:
            cols[c].append(vals[c])
        cols["tokens_per_seq"].append(pl if n is None else n)
    if not cols["ms"]:
        raise bad("the step table has no rows", "add one measured step shape per line under the header")
    arr = {c: np.array(v, dtype=float if c == "ms" else np.int64) for c, v in cols.items()}
    return StepRows(arr["prefill_seqs"], arr["prefill_len"], arr["decode_batch"], arr["decode_ctx"],
                    arr["tokens_per_seq"], arr["ms"], origin=name)
