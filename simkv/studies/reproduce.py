"""`simkv reproduce`: regenerate every figure and generated page in docs/ from scenarios/ and the
calibration data, deterministically (same code, same bytes), so a reviewer can check each plot.

The manifest below is the single list of what docs/ shows; a test checks that every image a
docs page links to is produced by it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from simkv.errors import SimkvError


@dataclass(frozen=True)
class DocJob:
    """One entry of docs/: a scenario (or sweep file) run, whose chosen figures are copied to
    docs/figures/<name>/; or a generator writing its own files."""

    name: str
    source: str = ""                       # scenario or sweep file, relative to the repository
    figures: tuple[str, ...] = ()          # PNG files of the results folder to keep
    kind: str = "scenario"                 # scenario | sweep | cost-model | reference | e2e-validation
    outputs: tuple[str, ...] = field(default=())  # generated files (for the manifest test)

    def targets(self) -> list[str]:
        return [f"figures/{self.name}/{f}" for f in self.figures] + list(self.outputs)


MANIFEST: tuple[DocJob, ...] = (
    DocJob("quickstart", "scenarios/quickstart.yaml", ("kv_breakdown.png", "latency_cdf.png", "kv_utilization.png",
                                                       "batch_queue.png")),
    DocJob("paged-vs-contiguous-h100", "scenarios/paged-vs-contiguous-h100.yaml",
           ("kv_breakdown_mean.png", "kv_breakdown.png", "latency_cdf.png", "batch_queue.png", "kv_utilization.png")),
    DocJob("vllm-sosp23-fig2", "scenarios/papers/vllm-sosp23-fig2.yaml", ("kv_breakdown_mean.png", "kv_breakdown.png")),
    DocJob("vllm-vs-tgi-h100", "scenarios/vllm-vs-tgi-h100.yaml", ("sweep.png",)),
    DocJob("mooncake-prefix-h100", "scenarios/mooncake-prefix-h100.yaml", ("latency_cdf.png", "kv_breakdown_mean.png")),
    DocJob("speculative-h100", "scenarios/models/speculative-h100.yaml", ("sweep.png",)),
    DocJob("fleet-routing-h100", "scenarios/fleet-routing-h100.yaml", ("fleet_replicas.png", "fleet_latency_by_pool.png")),
    DocJob("fleet-pd-h100", "scenarios/fleet-pd-h100.yaml", ("fleet_latency_by_pool.png",)),
    DocJob("fleet-autoscale-diurnal-h100", "scenarios/fleet-autoscale-diurnal-h100.yaml", ("fleet_replicas_over_time.png",)),
    DocJob("sweeps/paged-vs-contiguous-load", "scenarios/sweeps/paged-vs-contiguous-load.yaml", ("curves.png",),
           kind="sweep"),
    DocJob("cost-model", kind="cost-model",
           outputs=("cost-model.md", "figures/cost-model/predicted-vs-measured-h100.png",
                    "figures/cost-model/predicted-vs-measured-h200.png")),
    DocJob("scenario-reference", kind="reference", outputs=("scenario-reference.md",)),
    DocJob("validation-e2e", kind="e2e-validation",
           outputs=("validation-e2e.md", "figures/validation-e2e/measured-vs-simulated.png")),
)


def reproduce(root: Path, docs: Path, only: list[str] | None = None,
              log: Callable[[str], None] = lambda text: None) -> list[Path]:
    """Run the manifest (or the jobs named in `only`) from the repository at `root`, writing into
    `docs`; the files written."""
    names = [j.name for j in MANIFEST]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise SimkvError(f"no docs job {unknown}", field="--only", fix=f"one of: {', '.join(names)}")
    written: list[Path] = []
    for job in MANIFEST:
        if only and job.name not in only:
            continue
        start = time.perf_counter()
        written += _run(job, root, docs)
        log(f"{job.name}: {time.perf_counter() - start:.1f} s")
    return written


def _run(job: DocJob, root: Path, docs: Path) -> list[Path]:
    if job.kind == "reference":
        from simkv.report.reference import scenario_reference
        path = docs / "scenario-reference.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(scenario_reference())
        return [path]
    if job.kind == "e2e-validation":
        from simkv.studies.e2e_validation import write_page
        target = docs / "validation-e2e.md"
        if not target.exists() and (root / "docs" / "validation-e2e.md").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / "docs" / "validation-e2e.md", target)   # its hand-written text around the table
        write_page(root, target, docs / "figures" / "validation-e2e")
        return [docs / t for t in job.outputs]
    if job.kind == "cost-model":
        from simkv.report.cost_validation import write_report
        target = docs / "cost-model.md"
        if not target.exists() and (root / "docs" / "cost-model.md").exists():
            shutil.copyfile(root / "docs" / "cost-model.md", target)   # its hand-written text around the generated part
        write_report(target, docs / "figures" / "cost-model")
        return [docs / t for t in job.outputs]
    with tempfile.TemporaryDirectory(prefix="simkv-reproduce-") as tmp:
        out = Path(tmp)
        if job.kind == "sweep":
            _run_sweep_file(root / job.source, out)
        else:
            _run_scenario(root / job.source, out)
        dest = docs / "figures" / job.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in job.figures:
            if not (out / name).exists():
                raise SimkvError(f"{job.source} wrote no {name}", field="figures", fix="fix the manifest in simkv/studies/reproduce.py")
            shutil.copyfile(out / name, dest / name)
    return [dest / name for name in job.figures]


def _run_scenario(path: Path, out: Path) -> None:
    from simkv.files.scenario_file import load_scenario
    from simkv.files.results import scenario_title, write_results, write_sweep
    from simkv.simulate import simulate_sweep
    scenario = load_scenario(path)
    points = simulate_sweep(scenario)
    if scenario.sweep is not None:
        write_sweep(scenario.sweep.field, points, out, scenario_title(scenario, points))
    else:
        write_results(points[0][1], out)


def _run_sweep_file(path: Path, out: Path) -> None:
    from simkv.studies.sweep import run_sweep_file
    rows, _ = run_sweep_file(path, out)
    failed = [r["error"] for r in rows if r["error"]]
    if failed:
        raise SimkvError(f"{len(failed)} sweep point(s) failed: {failed[0]}", file=str(path))
