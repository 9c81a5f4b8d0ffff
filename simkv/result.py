"""`Result`: one simulated run's summary, request table and time series; saved as a results
folder (summary.json, requests.csv, timeseries.csv) and loaded back."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simkv.files.safe_paths import prepare_folder, write_file
from simkv.kv.base import KV_ROWS
from simkv.scenario import Scenario
from simkv.metrics.summary import Summary

_INT_COLUMNS = {"req_id", "group", "class_id", "prompt_tokens", "output_tokens", "max_new_tokens", "status", "reject_reason",
                "num_preemptions", *KV_ROWS, "num_running", "num_waiting"}


@dataclass
class Result:
    """What one simulation produced."""

    name: str
    scenario: Scenario | None
    summary: Summary
    requests: dict = field(default_factory=dict)     # column -> array, one row per request
    timeseries: dict = field(default_factory=dict)   # column -> array, one row per sample

    def save(self, folder: str | Path, root: str | Path | None = None) -> Path:
        """Write requests.csv, timeseries.csv, scenario.json and, last, summary.json into `folder`
        (each atomically, never through a symbolic link; `root`, default `folder`, is the results
        folder it lies in): a folder with summary.json is complete (sweeps rely on it to resume)."""
        folder = Path(folder)
        root = folder if root is None else Path(root)
        prepare_folder(folder, root)
        if self.scenario is not None:
            write_file(folder / "scenario.json", self.scenario.model_dump_json(indent=2, exclude_unset=True) + "\n",
                       root=root)
        write_columns(folder / "requests.csv", self.requests, root=root)
        write_columns(folder / "timeseries.csv", self.timeseries, root=root)
        write_file(folder / "summary.json", json.dumps(self.summary, indent=2) + "\n", root=root)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Result":
        folder = Path(folder)
        summary = json.loads((folder / "summary.json").read_text())
        scenario = None
        if (folder / "scenario.json").exists():
            scenario = Scenario.model_validate_json((folder / "scenario.json").read_text())
        return cls(summary.get("variant", folder.name), scenario, summary,
                   read_columns(folder / "requests.csv"), read_columns(folder / "timeseries.csv"))

    def to_pandas(self):
        """(requests, timeseries) as pandas DataFrames, when pandas is installed."""
        import pandas as pd  # optional dependency
        return pd.DataFrame(dict(self.requests)), pd.DataFrame(dict(self.timeseries))


def flat_metrics(summary: Summary) -> dict[str, float | int | None]:
    """The headline numbers of a summary as one flat row (comparison.csv, later sweeps)."""
    lat, kv, tp, b, r = (summary["latency_s"], summary["kv_cache"], summary["throughput"], summary["batch"],
                         summary["requests"])
    row = {"requests_per_s": tp["requests_per_s"], "output_tokens_per_s": tp["output_tokens_per_s"]}
    for metric in ("ttft", "tbt", "e2e", "tpot"):
        for q in ("p50", "p90", "p99", "max"):
            row[f"{metric}_{q}_s"] = lat[metric][q]
    for part, value in kv["mean_fraction"].items():
        row[f"kv_{part}_mean"] = value
    row["kv_utilization_peak"] = kv["utilization_peak"]
    row.update(mean_running=b["mean_running"], max_running=b["max_running"], mean_waiting=b["mean_waiting"],
               preemptions=r["preemptions"], rejected=r["rejected"], completed=r["completed"])
    if "slo" in summary:
        row.update(slo_attainment=summary["slo"]["attainment"], goodput_requests_per_s=summary["slo"]["goodput_requests_per_s"])
    return row


def _fmt(name: str, col) -> list[str]:
    arr = np.asarray(col)
    if arr.dtype.kind in "OUS":
        return [str(v) for v in arr]
    if name in _INT_COLUMNS or arr.dtype.kind in "iub":
        return [str(int(v)) for v in arr]
    return ["" if not np.isfinite(v) else repr(round(float(v), 9)) for v in arr]


def write_columns(path: Path, columns: dict, root: str | Path | None = None) -> None:
    """CSV with a header; NaN written as an empty field; text with commas or quotes quoted. Written
    atomically by `safe_paths.write_file` (`root`: the results folder, default the file's folder)."""
    names = list(columns)
    formatted = [_fmt(n, columns[n]) for n in names]
    fh = io.StringIO(newline="")
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(names)
    writer.writerows(zip(*formatted))
    write_file(path, fh.getvalue(), root=root)


def read_columns(path: Path) -> dict:
    if not path.exists():
        return {}
    with path.open() as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return {}
    names, body = rows[0], rows[1:]
    out = {}
    for i, n in enumerate(names):
        vals = [r[i] for r in body]
        if n in _INT_COLUMNS:
            out[n] = np.array([int(v) for v in vals], dtype=np.int64)
        else:
            out[n] = np.array([float(v) if v else np.nan for v in vals])
    return out
