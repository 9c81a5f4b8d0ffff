"""Writing a results folder: per-run files, the comparison table, figures and report.md.

Layout: a single run writes summary.json, requests.csv, timeseries.csv, scenario.json, the
figures and report.md into the folder. With variants each variant gets a sub-folder with its
files, and the folder holds summary.json (variant -> summary), comparison.csv, overlaid
figures and report.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simkv.errors import SimkvError
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
        from simkv.report import markdown_report
        names = write_figures(results, folder)
        (folder / "report.md").write_text(markdown_report(results, names))
    return folder


def write_figures(results: dict[str, Result], folder: Path) -> list[str]:
    """The figures of one run or of variants overlaid (PNG + SVG); the PNG names for report.md."""
    from simkv.figure_files import save_figure
    from simkv.plots import FIGURES
    names = []
    for filename, make in FIGURES.items():
        if filename == "kv_breakdown_mean.png" and len(results) == 1:
            continue
        save_figure(make(results), folder, filename.removesuffix(".png"))
        names.append(filename)
    return names


def scenario_title(scenario, points: list | None = None) -> str:
    """A figure title from structured fields: the scenario name, model, GPU, tensor parallelism
    and engine preset(s) of the results' setups (never the free-text description, which may
    name another GPU than the one simulated)."""
    from simkv.plots import setup_line
    setups = [r.summary.get("setup", {}) for _, results in points or [] for r in results.values()]
    if not setups:
        return scenario.name
    field = scenario.sweep.field if scenario.sweep is not None else None
    return setup_line(setups, scenario.name) + (f", swept {field}" if field else "")


def sweep_title(name: str, points: list[dict], rows: list[dict]) -> str:
    """`base: model on gpu, swept field, field` for the curves of a sweep file."""
    from simkv.plots import setup_line
    fields = list(dict.fromkeys(k for p in points for k in p))
    setups = [r["summary"]["setup"] for r in rows if r["summary"]]      # every point's: a swept GPU lists each
    return f"{setup_line(setups, name)}, swept {', '.join(fields)}" if setups else name


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_sweep(field: str, points: list[tuple[object, dict[str, Result]]], folder: str | Path, title: str) -> Path:
    """An in-scenario sweep: each point's files in `<field>=<value>/`, then the same table, curves
    and report as `simkv sweep` (sweep.csv, sweep.png/svg, report.md)."""
    folder = Path(folder)
    rows = []
    for value, results in points:
        sub = folder / _safe(f"{field.rsplit('.', 1)[-1]}={value}")
        for name, res in results.items():
            res.save(sub / _safe(name) if len(results) > 1 else sub)
            rows.append({field: value, "variant": name, "summary": res.summary, "error": None})
    first = next(iter(points[0][1].values()))
    write_points(rows, folder, title, x_field=field, table="sweep.csv", figure="sweep",
                 description=first.scenario.description if first.scenario else "")
    return folder


def redraw(folder: Path) -> list[str]:
    """Figures and report.md of a saved results folder (one run, one sub-folder per variant, or a sweep)."""
    if (folder / "sweep.json").exists():
        return draw_sweep(folder)
    if not (folder / "summary.json").exists():
        raise SimkvError("no summary.json here", file=str(folder), fix="give a folder written by `simkv run` or `simkv sweep`")
    subs = sorted(p for p in folder.iterdir() if (p / "summary.json").exists())
    if (folder / "requests.csv").exists() or not subs:
        results = {"base": Result.load(folder)}
    else:
        order = list(json.loads((folder / "summary.json").read_text()))
        loaded = {Result.load(p).name: Result.load(p) for p in subs}
        results = {name: loaded[name] for name in order if name in loaded}
    from simkv.report import markdown_report
    figures = write_figures(results, folder)
    (folder / "report.md").write_text(markdown_report(results, figures))
    return figures + ["report.md"]


SWEEP_ROW_KEYS = ("variant", "key", "summary", "error", "cached")


def write_points(rows: list[dict], folder: Path, title: str, *, x_field: str | None = None,
                 table: str = "points.csv", figure: str = "curves", description: str = "") -> bool:
    """The table of a sweep (one row per point: swept values, variant, every flat metric, error,
    the point's cache key), sweep.json (what the curves need besides the table), the standard
    curves against `x_field` (default the arrival rate when it is swept; one line per variant and
    value of the other swept fields) and report.md. Figures are redrawn only when the table
    changed or one is missing, so a fully cached rerun does no plotting; True when drawn."""
    folder.mkdir(parents=True, exist_ok=True)
    swept = [k for k in rows[0] if k not in SWEEP_ROW_KEYS]
    flat = [flat_metrics(r["summary"]) if r["summary"] else {} for r in rows]
    metric_names = next((list(f) for f in flat if f), [])
    columns = {k: [str(r[k]) for r in rows] for k in swept}
    columns["variant"] = [r["variant"] for r in rows]
    for m in metric_names:
        columns[m] = [np.nan if f.get(m) is None else f[m] for f in flat]
    columns["error"] = [r["error"] or "" for r in rows]
    if any("key" in r for r in rows):
        columns["key"] = [r.get("key", "") for r in rows]
    path = folder / table
    before = path.read_bytes() if path.exists() else None
    write_columns(path, columns)
    x = x_field or ("workload.arrival.rate" if "workload.arrival.rate" in swept else None)
    first = next((r["summary"] for r in rows if r["summary"]), None)
    if x is None or first is None:
        return False
    overrides = {_curve_label(r, x, swept): r["summary"].get("overrides", {}) for r in rows if r["summary"]}
    meta = {"x_field": x, "swept": swept, "title": title, "description": description, "table": table,
            "figure": figure, "summary": {k: first[k] for k in ("scenario", "setup")}, "overrides": overrides}
    (folder / "sweep.json").write_text(json.dumps(meta, indent=2) + "\n")
    if before == path.read_bytes() and all((folder / f"{figure}.{ext}").exists() for ext in ("png", "svg")):
        return False
    draw_sweep(folder)
    return True


def _curve_label(row: dict, x: str, swept: list[str]) -> str:
    """One curve per variant and value of the swept fields other than x."""
    return " ".join([row["variant"]] + [f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in swept if k != x])


def draw_sweep(folder: Path) -> list[str]:
    """The curves and report.md of a sweep folder, from its table and sweep.json alone."""
    import csv

    from simkv.figure_files import save_figure
    from simkv.plots import sweep_curves
    from simkv.report import sweep_report
    meta = json.loads((folder / "sweep.json").read_text())
    x, swept = meta["x_field"], meta["swept"]
    with (folder / meta["table"]).open(newline="") as fh:
        table = [r for r in csv.DictReader(fh) if not r["error"]]
    skip = set(swept) | {"variant", "error", "key"}
    rows = [{"value": r[x], "variant": (label := _curve_label(r, x, swept)), "group": r["variant"],
             "style": label[len(r["variant"]):], "overrides": meta["overrides"].get(label, {}),
             **{k: _number(v) for k, v in r.items() if k not in skip}} for r in table]
    names = save_figure(sweep_curves(rows, x, meta["title"]), folder, meta["figure"])
    (folder / "report.md").write_text(sweep_report(x, rows, meta["summary"], meta["description"], names[0]))
    return names + ["report.md"]


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value
