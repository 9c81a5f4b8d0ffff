"""Writing a results folder: per-run files, the comparison table, figures and report.md.

Layout: a single run writes summary.json, requests.csv, timeseries.csv, scenario.json, the
figures and report.md into the folder. With variants each variant gets a sub-folder with its
files, and the folder holds summary.json (variant -> summary), comparison.csv, overlaid
figures and report.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from simkv.errors import SimkvError
from simkv.plots import FIGURES
from simkv.report import markdown_report
from simkv.result import Result, flat_metrics, write_columns


def write_results(results: dict[str, Result], folder: str | Path, figures: bool = True) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(results) == 1:
        next(iter(results.values())).save(folder)
    else:
        for name, res in results.items():
            res.save(folder / _safe(name))
        summaries = {name: res.summary for name, res in results.items()}
        (folder / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
        rows = {name: flat_metrics(res.summary) for name, res in results.items()}
        columns = {"variant": list(rows)}
        for key in next(iter(rows.values())):
            columns[key] = [np.nan if row.get(key) is None else row[key] for row in rows.values()]
        write_columns(folder / "comparison.csv", columns)
    if figures:
        names = write_figures(results, folder)
        (folder / "report.md").write_text(markdown_report(results, names))
    return folder


def write_figures(results: dict[str, Result], folder: Path) -> list[str]:
    names = []
    for filename, make in FIGURES.items():
        if filename == "kv_breakdown_mean.png" and len(results) == 1:
            continue
        fig = make(results)
        fig.savefig(folder / filename, dpi=110)
        fig.savefig(folder / filename.replace(".png", ".svg"))  # vector copy for papers
        plt.close(fig)
        names.append(filename)
    return names


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_sweep(field: str, points: list[tuple[object, dict[str, Result]]], folder: str | Path, title: str) -> Path:
    """Each point's files in `<field>=<value>/`, plus sweep.csv, sweep.png/svg and report.md."""
    from simkv.plots import sweep_curves
    from simkv.report import sweep_report
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for value, results in points:
        sub = folder / _safe(f"{field.rsplit('.', 1)[-1]}={value}")
        for name, res in results.items():
            res.save(sub / _safe(name) if len(results) > 1 else sub)
            rows.append({"value": value, "variant": name, **flat_metrics(res.summary)})
    columns = {key: [np.nan if r.get(key) is None else r[key] for r in rows] for key in rows[0]}
    write_columns(folder / "sweep.csv", columns)
    fig = sweep_curves(rows, field, title)
    for ext in ("png", "svg"):
        fig.savefig(folder / f"sweep.{ext}", dpi=110)
    plt.close(fig)
    (folder / "report.md").write_text(sweep_report(field, rows, points, "sweep.png"))
    return folder


def redraw(folder: Path) -> list[str]:
    """Figures and report.md of a saved results folder (one run, or one sub-folder per variant)."""
    if not (folder / "summary.json").exists():
        raise SimkvError("no summary.json here", file=str(folder), fix="give a folder written by `simkv run`")
    subs = sorted(p for p in folder.iterdir() if (p / "summary.json").exists())
    if (folder / "requests.csv").exists() or not subs:
        results = {"base": Result.load(folder)}
    else:
        order = list(json.loads((folder / "summary.json").read_text()))
        loaded = {Result.load(p).name: Result.load(p) for p in subs}
        results = {name: loaded[name] for name in order if name in loaded}
    figures = write_figures(results, folder)
    (folder / "report.md").write_text(markdown_report(results, figures))
    return figures + ["report.md"]


def write_points(rows: list[dict], folder: Path, title: str) -> None:
    """points.csv (swept values, variant, headline metrics, error) and, when the arrival rate is
    swept, the standard curves against it."""
    from simkv.plots import sweep_curves
    folder.mkdir(parents=True, exist_ok=True)
    swept = [k for k in rows[0] if k not in ("variant", "key", "summary", "error")]
    flat = [flat_metrics(r["summary"]) if r["summary"] else {} for r in rows]
    metric_names = next((list(f) for f in flat if f), [])
    columns = {k: [str(r[k]) for r in rows] for k in swept}
    columns["variant"] = [r["variant"] for r in rows]
    for m in metric_names:
        columns[m] = [np.nan if f.get(m) is None else f[m] for f in flat]
    columns["error"] = [r["error"] or "" for r in rows]
    write_columns(folder / "points.csv", columns)
    x = "workload.arrival.rate"
    if x in swept and metric_names:
        others = [k for k in swept if k != x]
        curve_rows = [{"value": r[x], "variant": " ".join([r["variant"]] + [f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in others]),
                       **f} for r, f in zip(rows, flat) if f]
        fig = sweep_curves(curve_rows, x, title)
        for ext in ("png", "svg"):
            fig.savefig(folder / f"curves.{ext}", dpi=110)
        plt.close(fig)
