"""`simkv sweep`: a base scenario plus grids (cartesian) and zips over any dotted field, run on
local worker processes, each point cached by a hash of its full scenario so a rerun skips
finished points and an interrupted sweep resumes; a failing point is reported, not fatal.

Sweep file:
    base: ../scenarios/paged-vs-contiguous-h100.yaml   # relative to the sweep file
    set: {run.duration_s: 120}                          # fixed overrides (optional)
    grid: {workload.arrival.rate: [5, 10, 20]}          # every combination (optional)
    zip: {engine.block_size: [8, 16], engine.max_num_seqs: [128, 256]}   # stepped together (optional)
    variants: [paged, contiguous-max_model_len]         # which of the base's variants (default all)

Points run on local processes or on Ray (`simkv.studies.executors`) with the same results.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from simkv.errors import SimkvError
from simkv.files.scenario_file import apply_overrides, expand_variants, load_scenario, read_yaml_mapping, validate_scenario
from simkv.scenario import Scenario
from simkv.metrics.summary import Summary

SWEEP_KEYS = {"base", "set", "grid", "zip", "variants"}


def load_sweep(path: Path) -> tuple[Scenario, list[dict[str, Any]], list[str] | None]:
    """(base scenario, [overrides of each point], variants to run) from a sweep file."""
    raw = read_yaml_mapping(path)
    unknown = set(raw) - SWEEP_KEYS
    if unknown or "base" not in raw:
        raise SimkvError(f"sweep files have keys {sorted(SWEEP_KEYS)}" + (f"; unknown: {sorted(unknown)}" if unknown else ""),
                         file=str(path), fix="base: is required (a scenario file, relative to the sweep file)")
    base = load_scenario(path.parent / str(raw["base"]), raw.get("set") or {})
    grid = raw.get("grid") or {}
    zipped = raw.get("zip") or {}
    for name, table in (("grid", grid), ("zip", zipped)):
        if not isinstance(table, dict) or any(not isinstance(v, list) or not v for v in table.values()):
            raise SimkvError(f"{name} maps dotted fields to non-empty lists of values", file=str(path), field=name,
                             fix=f"{name}: {{workload.arrival.rate: [5, 10, 20]}}")
    if len({len(v) for v in zipped.values()}) > 1:
        raise SimkvError("zip lists must have the same length", file=str(path), field="zip", fix="one value per step in each list")
    zip_rows = [dict(zip(zipped, vals)) for vals in zip(*zipped.values())] if zipped else [{}]
    grid_rows = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    points = [{**g, **z} for g in grid_rows for z in zip_rows]
    for point in points:  # validate every point up front
        validate_scenario(apply_overrides(base.model_dump(exclude_unset=True), point, origin=str(path)), str(path))
    return base, points, raw.get("variants")


def point_key(scenario: Scenario, variant: str) -> str:
    """A hash of everything that determines a point's result: the full scenario, the engine the
    variant actually runs (its preset's defaults filled in: a field left unset and the same field set
    to its default can run different engines), the variant, and simkv's own code and data (a fixed
    bug must not be served from the cache)."""
    text = json.dumps([scenario.model_dump(mode="json"), resolved_engine(scenario, variant), variant,
                       code_fingerprint()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolved_engine(scenario: Scenario, variant: str | None) -> dict:
    """The engine settings `variant` of `scenario` simulates, after its preset filled the unset fields."""
    from simkv.presets import apply_preset
    runs = dict(expand_variants(scenario))
    sub = runs[variant] if variant in runs else next(iter(runs.values()))
    return apply_preset(sub.engine).model_dump(mode="json")


def scenario_message(scenario: Scenario) -> str:
    """A scenario as JSON for a worker process or Ray task. Only the fields the scenario set are sent:
    presets fill exactly the engine fields a scenario leaves unset, and a full dump would mark every
    field set (a `preset: tgi` point would run the default FCFS engine)."""
    return scenario.model_dump_json(exclude_unset=True)


@lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """A hash of the simulator's source, catalog and calibration files."""
    root = Path(__file__).parents[1]   # the simkv package (this file is simkv/studies/sweep.py)
    digest = hashlib.sha256()
    for path in sorted(p for ext in ("*.py", "*.yaml", "*.csv", "*.json") for p in root.rglob(ext)):
        if "gpu" in path.relative_to(root).parts[:1]:
            continue                                  # validation mode does not shape simulation results
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _run_point(args: tuple[str, str | None]):
    """Worker (a local process or a Ray task): simulate one (`scenario_message` JSON, variant);
    (Result, error). The driver saves it, so workers need no shared disk."""
    scenario_json, variant = args
    from simkv.simulate import simulate
    try:
        return simulate(Scenario.model_validate_json(scenario_json), variant), None
    except Exception as err:  # a crashed point is reported, the sweep goes on
        return None, f"{type(err).__name__}: {err}"


def run_sweep(base: Scenario, points: list[dict], variants: list[str] | None, out: Path, workers: int = 0,
              progress=None, executor: str = "local", address: str | None = None) -> list[dict]:
    """Rows (swept values, variant, key, summary or error) for every point x variant; finished
    points are read from `out/points/<hash>/`, the rest run on the executor and are saved as each ends."""
    from simkv.studies.executors import run_tasks
    names = [n for n, _ in expand_variants(base)]
    chosen = variants or names
    missing = [v for v in chosen if v not in names]
    if missing:
        raise SimkvError(f"no variant {missing} in the base scenario (have {names})", field="variants",
                         fix="name variants of the base scenario")
    base_raw = base.model_dump(exclude_unset=True)
    rows, todo, todo_rows = [], [], []
    for point in points:
        sc = validate_scenario(apply_overrides(base_raw, point, origin="sweep"), "sweep")
        for variant in chosen if base.variants else [None]:
            label = variant or "base"
            key = point_key(sc, label)
            folder = out / "points" / key
            row = {**point, "variant": label, "key": key, "summary": None, "error": None, "cached": False}
            rows.append(row)
            if (folder / "summary.json").exists():
                row["summary"] = _read_summary(folder / "summary.json")
                row["cached"] = True
            else:
                todo.append((scenario_message(sc), variant))
                todo_rows.append(row)
    for done, (i, outcome, died) in enumerate(run_tasks(_run_point, todo, executor, workers, address), start=1):
        row = todo_rows[i]
        result, error = outcome if outcome is not None else (None, died)
        if result is not None:
            result.save(out / "points" / row["key"], root=out)
            row["summary"] = result.summary
        row["error"] = error
        if progress:
            progress(done, len(todo))
    return rows


def run_sweep_file(path: Path, out: Path, *, workers: int = 0, executor: str = "local", address: str | None = None,
                   progress=None) -> tuple[list[dict], bool]:
    """Load a sweep file, run (or read from the cache) every point, write points.csv, the curves
    and report.md into `out`: (rows, whether figures were drawn)."""
    from simkv.files.results import sweep_title, write_points
    base, points, variants = load_sweep(path)
    rows = run_sweep(base, points, variants, out, workers, progress, executor, address)
    return rows, write_points(rows, out, sweep_title(base.name, points, rows))


def _read_summary(path: Path) -> Summary:
    """A cached point's summary.json (the same shape simkv.metrics.summarize returns)."""
    return json.loads(path.read_text())

