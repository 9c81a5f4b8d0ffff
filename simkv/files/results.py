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
from simkv.files.safe_paths import folder_names, plain_name, prepare_folder, write_file

# files written next to the variant folders / the sweep's value folders: no such folder may take their name
RUN_FILES = frozenset({"summary.json", "comparison.csv", "report.md"})
SWEEP_FILES = frozenset({"sweep.csv", "sweep.json", "sweep.png", "sweep.svg", "report.md"})


def write_results(results: dict[str, Result], folder: str | Path, figures: bool = True) -> Path:
    """Write a results folder (see the module docstring). Every file goes through
    `safe_paths.write_file`: atomic, never through a symbolic link, never outside `folder`;
    `folder` is created if missing (its parent must exist)."""
    folder = Path(folder)
    subs = variant_folders(list(results), figures=figures) if len(results) > 1 else None
    prepare_folder(folder)
    if subs is None:
        next(iter(results.values())).save(folder)
    else:
        for (name, res), sub in zip(results.items(), subs):
            res.save(folder / sub, root=folder)
        summaries = {name: res.summary for name, res in results.items()}
        write_file(folder / "summary.json", json.dumps(summaries, indent=2) + "\n", root=folder)
        rows = {name: flat_metrics(res.summary) for name, res in results.items()}
        columns = {"variant": list(rows)}
        for key in next(iter(rows.values())):
            columns[key] = [np.nan if row.get(key) is None else row[key] for row in rows.values()]
        write_columns(folder / "comparison.csv", columns, root=folder)
    if figures:
        from simkv.report.markdown import markdown_report
        names = write_figures(results, folder)
        write_file(folder / "report.md", markdown_report(results, names), root=folder)
    return folder


def variant_folders(names: list[str], *, file: str | None = None, figures: bool = True) -> list[str]:
    """The sub-folder of each variant (in order): its name with characters other than letters,
    digits, `-`, `_`, `.` as `_`; a SimkvError for a name that cannot be a folder, for two names
    that would share one (`a/b` and `a_b`) and for one that would take the name of a file of
    the results folder."""
    reserved = set(RUN_FILES)
    if figures:
        from simkv.report.fleet_plots import FLEET_FIGURES
        from simkv.report.plots import FIGURES
        reserved |= {f"{stem.removesuffix('.png')}.{ext}" for stem in (*FIGURES, *FLEET_FIGURES)
                     for ext in ("png", "svg")}
    return folder_names([(n, f"variants[{i}].name", repr(n)) for i, n in enumerate(names)], what="variant", file=file,
                        reserved=reserved)


def sweep_folders(field: str, values: list, *, file: str | None = None) -> list[str]:
    """The sub-folder of each value of an in-scenario sweep (`<field>=<value>`, made safe like
    variant names); a SimkvError when two values would share one (5 and '5')."""
    leaf = field.rsplit(".", 1)[-1]
    return folder_names([(f"{leaf}={v}", f"sweep.values[{i}]", repr(v)) for i, v in enumerate(values)],
                        what="sweep value", file=file, reserved=SWEEP_FILES)


def check_output_names(scenario, file: str | None = None) -> None:
    """Refuse, before anything runs, variant names and sweep values that cannot be folders of
    the results folder (see variant_folders, sweep_folders)."""
    if len(scenario.variants) > 1:
        variant_folders([v.name for v in scenario.variants], file=file, figures=scenario.sweep is None)
    if scenario.sweep is not None:
        sweep_folders(scenario.sweep.field, scenario.sweep.values, file=file)


def write_figures(results: dict[str, Result], folder: Path) -> list[str]:
    """The figures of one run or of variants overlaid (PNG + SVG); the PNG names for report.md."""
    from simkv.files.figures import save_figure
    from simkv.report.plots import FIGURES
    names = []
    for filename, make in FIGURES.items():
        if filename == "kv_breakdown_mean.png" and len(results) == 1:
            continue
        save_figure(make(results), folder, filename.removesuffix(".png"), root=folder)
        names.append(filename)
    from simkv.report.fleet_plots import FLEET_FIGURES, fleet_results
    if fleet_results(results):   # fleet runs: per-replica load and KV, latency by pool, replicas over time
        for filename, make in FLEET_FIGURES.items():
            save_figure(make(results), folder, filename.removesuffix(".png"), root=folder)
            names.append(filename)
    return names


def scenario_title(scenario, points: list | None = None) -> str:
    """A figure title from structured fields: the scenario name, model, GPU, tensor parallelism
    and engine preset(s) of the results' setups (never the free-text description, which may
    name another GPU than the one simulated)."""
    from simkv.report.plots import setup_line
    setups = [r.summary.get("setup", {}) for _, results in points or [] for r in results.values()]
    if not setups:
        return scenario.name
    field = scenario.sweep.field if scenario.sweep is not None else None
    return setup_line(setups, scenario.name) + (f", swept {field}" if field else "")


def sweep_title(name: str, points: list[dict], rows: list[dict]) -> str:
    """`base: model on gpu, swept field, field` for the curves of a sweep file."""
    from simkv.report.plots import setup_line
    fields = list(dict.fromkeys(k for p in points for k in p))
    setups = [r["summary"]["setup"] for r in rows if r["summary"]]      # every point's: a swept GPU lists each
    return f"{setup_line(setups, name)}, swept {', '.join(fields)}" if setups else name


def write_sweep(field: str, points: list[tuple[object, dict[str, Result]]], folder: str | Path, title: str) -> Path:
    """An in-scenario sweep: each point's files in `<field>=<value>/`, then the same table, curves
    and report as `simkv sweep` (sweep.csv, sweep.png/svg, report.md)."""
    folder = Path(folder)
    subs = sweep_folders(field, [value for value, _ in points])
    variants = variant_folders(list(points[0][1]), figures=False) if len(points[0][1]) > 1 else None
    prepare_folder(folder)
    rows = []
    for (value, results), sub in zip(points, subs):
        for (name, res), variant in zip(results.items(), variants or [None]):
            res.save(folder / sub / variant if variant else folder / sub, root=folder)
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
    from simkv.report.markdown import markdown_report
    figures = write_figures(results, folder)
    write_file(folder / "report.md", markdown_report(results, figures), root=folder)
    return figures + ["report.md"]


SWEEP_ROW_KEYS = ("variant", "key", "summary", "error", "cached")


def write_points(rows: list[dict], folder: Path, title: str, *, x_field: str | None = None,
                 table: str = "points.csv", figure: str = "curves", description: str = "") -> bool:
    """The table of a sweep (one row per point: swept values, variant, every flat metric, error,
    the point's cache key), sweep.json (what the curves need besides the table), the standard
    curves against `x_field` (default the arrival rate when it is swept; one line per variant and
    value of the other swept fields) and report.md. Figures are redrawn only when the table
    changed or one is missing, so a fully cached rerun does no plotting; True when drawn."""
    plain_name(table, field="table"), plain_name(figure, field="figure"), plain_name(f"{figure}.png", field="figure")
    prepare_folder(folder)
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
    write_columns(path, columns, root=folder)
    x = x_field or ("workload.arrival.rate" if "workload.arrival.rate" in swept else None)
    first = next((r["summary"] for r in rows if r["summary"]), None)
    if x is None or first is None:
        return False
    overrides = {_curve_label(r, x, swept): r["summary"].get("overrides", {}) for r in rows if r["summary"]}
    meta = {"x_field": x, "swept": swept, "title": title, "description": description, "table": table,
            "figure": figure, "summary": {k: first[k] for k in ("scenario", "setup")}, "overrides": overrides}
    write_file(folder / "sweep.json", json.dumps(meta, indent=2) + "\n", root=folder)
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

    from simkv.files.figures import save_figure
    from simkv.report.plots import sweep_curves
    from simkv.report.markdown import sweep_report
    meta = json.loads((folder / "sweep.json").read_text())
    for key, ext in (("table", ""), ("figure", ".png")):   # names read from a file: used as they are, or refused
        if not isinstance(meta.get(key), str):
            raise SimkvError("missing or not text", file=str(folder / "sweep.json"), field=key,
                             fix="rerun the sweep to rewrite sweep.json")
        plain_name(meta[key], file=str(folder / "sweep.json"), field=key)
        plain_name(meta[key] + ext, file=str(folder / "sweep.json"), field=key)
    x, swept = meta["x_field"], meta["swept"]
    with (folder / meta["table"]).open(newline="") as fh:
        table = [r for r in csv.DictReader(fh) if not r["error"]]
    skip = set(swept) | {"variant", "error", "key"}
    rows = [{"value": r[x], "variant": (label := _curve_label(r, x, swept)), "group": r["variant"],
             "style": label[len(r["variant"]):], "overrides": meta["overrides"].get(label, {}),
             **{k: _number(v) for k, v in r.items() if k not in skip}} for r in table]
    names = save_figure(sweep_curves(rows, x, meta["title"]), folder, meta["figure"], root=folder)
    write_file(folder / "report.md", sweep_report(x, rows, meta["summary"], meta["description"], names[0]), root=folder)
    return names + ["report.md"]


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value
