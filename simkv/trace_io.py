"""Reading request traces (an I/O edge): the public traces shipped in `simkv/workload/traces/`
(gzip copies, byte-identical to the team's files; provenance in that folder's README) and users'
own CSV / JSON Lines files with a column mapping. Files are read line by line; every problem
becomes a SimkvError naming the file, the line and the column.
"""

from __future__ import annotations

import csv
from array import array
import gzip
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from simkv.errors import SimkvError
from simkv.scenario import TraceColumns, TraceSpec

BUILTIN = {
    "azure2023_conv": ("azure2023_conv.csv.gz", "csv", TraceColumns(arrival="TIMESTAMP", prompt="ContextTokens", output="GeneratedTokens"), "datetime"),
    "mooncake_conversation": ("mooncake_conversation.jsonl.gz", "jsonl", TraceColumns(arrival="timestamp", prompt="input_length", output="output_length", block_ids="hash_ids"), "ms"),
    "mooncake_synthetic": ("mooncake_synthetic.jsonl.gz", "jsonl", TraceColumns(arrival="timestamp", prompt="input_length", output="output_length", block_ids="hash_ids"), "ms"),
    "lengths_sharegpt_8k_llama2": ("lengths_sharegpt_8k_llama2.csv.gz", "csv", TraceColumns(prompt="num_prefill_tokens", output="num_decode_tokens"), "s"),
    "lengths_arxiv_summarization_llama2": ("lengths_arxiv_summarization_llama2.csv.gz", "csv", TraceColumns(prompt="num_prefill_tokens", output="num_decode_tokens"), "s"),
    "lengths_bwb_llama2": ("lengths_bwb_llama2.csv.gz", "csv", TraceColumns(prompt="num_prefill_tokens", output="num_decode_tokens"), "s"),
}
MOONCAKE_BLOCK_TOKENS = 512


@dataclass(frozen=True)
class TraceData:
    """A trace's requests in file order: arrival times (s, from the first; None for lengths-only
    tables), prompt and output tokens, and Mooncake-style prefix block ids when present."""

    origin: str
    arrival_s: np.ndarray | None
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    block_ids: list | None = None
    block_tokens: int = MOONCAKE_BLOCK_TOKENS
    session: np.ndarray | None = None   # conversation id per request (int codes), or None

    @property
    def num_requests(self) -> int:
        return len(self.prompt_tokens)


def _open_text(path: Path | None, builtin: str | None):
    if builtin is not None:
        raw = resources.files("simkv.workload").joinpath("traces", builtin).read_bytes()
        return io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(raw)), encoding="utf-8", newline="")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _parse_time(text: str, unit: str) -> float:
    if unit == "datetime":
        day, _, frac = text.strip().partition(".")
        base = datetime.strptime(day, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        return base.timestamp() + (float("0." + frac) if frac else 0.0)
    value = float(text)
    return value * {"s": 1.0, "ms": 1e-3, "us": 1e-6}[unit]


def _rows(fh, fmt: str, origin: str):
    """(line number, mapping) per record."""
    if fmt == "csv":
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise SimkvError("the file is empty", file=origin, fix="give a CSV with a header line")
        for row in reader:
            yield reader.line_num, row
        return
    for number, line in enumerate(fh, start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise SimkvError(f"line {number} is not JSON ({err.msg})", file=origin,
                                 fix="one JSON object per line") from None


def read_trace(spec: TraceSpec, base_dir: Path | None = None) -> TraceData:
    """Read the trace `spec` names (relative paths from `base_dir`), checking every record."""
    if spec.name is not None:
        filename, fmt, cols, unit = BUILTIN[spec.name]
        origin, path, builtin = spec.name, None, filename
    else:
        path = (base_dir or Path(".")) / spec.path
        origin, builtin, cols, unit = str(path), None, spec.columns, spec.time_unit
        if not path.exists():
            raise SimkvError("trace file not found", file=origin, field="workload.trace.path",
                             fix="paths are relative to the scenario file")
        fmt = spec.format or ("jsonl" if ".jsonl" in path.name or ".json" in path.name else "csv")
    # compact typed buffers: a long trace costs 8 bytes per number, not a Python object each
    times, prompts, outputs, blocks, sessions = array("d"), array("q"), array("q"), [], []
    end = spec.window_s[1] if spec.window_s is not None else None
    keys = {"arrival": cols.arrival, "prompt": cols.prompt, "output": cols.output}
    with _open_text(path, builtin) as fh:
        for line, row in _rows(fh, fmt, origin):
            missing = [k for k in keys.values() if k is not None and k not in row]
            if missing:
                raise SimkvError(f"line {line}: no column {', '.join(repr(m) for m in missing)} (have: {', '.join(map(str, row))})",
                                 file=origin, field="workload.trace.columns", fix="map the columns to the file's names")
            try:
                p, o = int(float(row[cols.prompt])), int(float(row[cols.output]))
                t = _parse_time(str(row[cols.arrival]), unit) if cols.arrival else None
            except (ValueError, TypeError):
                raise SimkvError(f"line {line}: not a number in {({k: row.get(v) for k, v in keys.items() if v})}",
                                 file=origin, fix="token counts must be whole numbers and times numbers in time_unit") from None
            if p < 1 or o < 1:
                raise SimkvError(f"line {line}: token counts must be >= 1 (prompt {p}, output {o})", file=origin,
                                 fix="drop such rows from the file")
            if t is not None and end is not None and times and t - times[0] >= end:
                break  # past the replay window: the rest of the file is never read
            if t is not None:
                if not math.isfinite(t) or t < 0:
                    raise SimkvError(f"line {line}: negative or invalid time {row[cols.arrival]!r}", file=origin,
                                     fix="times are non-negative, in workload.trace.time_unit")
                if times and t < times[-1]:
                    raise SimkvError(f"line {line}: time {row[cols.arrival]!r} is earlier than the line before",
                                     file=origin, fix="sort the trace by arrival time")
                times.append(t)
            prompts.append(p)
            outputs.append(o)
            if cols.block_ids is not None:
                ids = row.get(cols.block_ids)
                if isinstance(ids, str):
                    ids = json.loads(ids) if ids.strip().startswith("[") else [int(x) for x in ids.split()]
                if not isinstance(ids, list) or not ids:
                    raise SimkvError(f"line {line}: {cols.block_ids!r} is not a list of block ids", file=origin,
                                     field="workload.trace.columns.block_ids", fix="a JSON list like [0, 1, 2]")
                blocks.append(ids)
            if cols.session is not None:
                sessions.append(str(row.get(cols.session)))
    if not prompts:
        raise SimkvError("the trace has no requests", file=origin, fix="give a file with at least one row")
    arrival = np.frombuffer(times, dtype=np.float64) - times[0] if times else None
    session = np.unique(np.array(sessions), return_inverse=True)[1].astype(np.int64) if sessions else None
    return TraceData(origin, arrival, np.frombuffer(prompts, dtype=np.int64).copy(),
                     np.frombuffer(outputs, dtype=np.int64).copy(), blocks or None, cols.block_tokens, session)


def trace_stats(data: TraceData) -> dict:
    """Count, span, rate, inter-arrival CV, and prompt/output mean/p50/p99/max with the fitted
    lognormal (mu, sigma of log tokens) — the statistics of the traces README."""
    def dist(a):
        a = a.astype(np.float64)
        logs = np.log(a)
        return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
                "max": int(a.max()), "min": int(a.min()),
                "lognormal_mu": float(logs.mean()), "lognormal_sigma": float(logs.std())}
    out = {"trace": data.origin, "requests": data.num_requests}
    if data.arrival_s is not None and data.num_requests > 1:
        span = float(data.arrival_s[-1])
        gaps = np.diff(data.arrival_s)
        out.update(span_s=span, mean_rate_per_s=data.num_requests / span if span > 0 else None,
                   interarrival_cv=float(gaps.std() / gaps.mean()) if gaps.mean() > 0 else None)
    out.update(prompt_tokens=dist(data.prompt_tokens), output_tokens=dist(data.output_tokens))
    return out


@lru_cache(maxsize=8)
def trace_for(spec: TraceSpec | None) -> TraceData | None:
    """The trace a workload names (read once per process), or None."""
    return None if spec is None else read_trace(spec)
