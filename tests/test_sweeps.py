"""`simkv sweep`: grids and zips, the per-point cache (rerun, resume), crashed points reported,
figures redrawn only when results change, and the Ray executor giving the same points.csv."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, cli_process, run_cli

QUICK = ROOT / "scenarios" / "quickstart.yaml"



def _sweep_file(tmp_path: Path, extra: str = "", zipped: str = "") -> Path:
    (tmp_path / "s.yaml").write_text(
        f"base: {QUICK}\n"
        "set: {run.num_requests: 80, run.warmup_s: 0}\n"
        "grid: {workload.arrival.rate: [4, 12]}\n"
        f"zip: {{engine.block_size: [16, 32], engine.max_num_seqs: [64, 128]{zipped}}}\n" + extra)
    return tmp_path / "s.yaml"


def test_sweep_grid_zip_cache_and_errors(tmp_path):
    from simkv.studies.sweep import load_sweep, run_sweep
    base, points, variants = load_sweep(_sweep_file(tmp_path))
    assert len(points) == 4 and points[1] == {"workload.arrival.rate": 4, "engine.block_size": 32, "engine.max_num_seqs": 128}
    rows = run_sweep(base, points, variants, tmp_path / "out", workers=2)
    assert all(r["summary"] is not None and r["error"] is None and not r["cached"] for r in rows)
    again = run_sweep(base, points, variants, tmp_path / "out", workers=2)
    assert all(r["cached"] for r in again)
    assert [r["summary"] for r in again] == [r["summary"] for r in rows]      # read back from the cache
    proc = run_cli("sweep", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0 and "(4 cached)" in proc.stdout, proc.stderr
    table = list(csv.DictReader((tmp_path / "out" / "points.csv").open()))
    assert len(table) == 4 and {r["engine.block_size"] for r in table} == {"16", "32"}
    assert [r["key"] for r in table] == [r["key"] for r in rows]
    for name in ("curves.png", "curves.svg", "report.md", "sweep.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    (tmp_path / "bad.yaml").write_text(f"base: {QUICK}\ngrid: {{engine.block_sise: [8]}}\n")
    proc = run_cli("sweep", str(tmp_path / "bad.yaml"))
    assert proc.returncode == 2 and "block_sise" in proc.stderr and "Traceback" not in proc.stderr


def test_crashed_point_is_reported_and_interrupted_sweep_resumes(tmp_path):
    from simkv.studies.sweep import load_sweep, run_sweep
    # 3 blocks cannot hold one request: that point fails when built, the others finish
    path = _sweep_file(tmp_path).read_text().replace("grid: {workload.arrival.rate: [4, 12]}",
                                                    "grid: {workload.arrival.rate: [4], engine.num_gpu_blocks: [3, 3000]}")
    (tmp_path / "s.yaml").write_text(path)
    base, points, variants = load_sweep(tmp_path / "s.yaml")
    rows = run_sweep(base, points, variants, tmp_path / "out", workers=2)
    failed = [r for r in rows if r["error"]]
    assert len(failed) == 2 and all("KV cache holds" in r["error"] for r in failed)
    assert all(r["summary"] for r in rows if r["engine.num_gpu_blocks"] == 3000)
    # an interrupted sweep: one finished folder lost its summary (the completion marker, written last)
    done = next(r for r in rows if r["summary"])
    (tmp_path / "out" / "points" / done["key"] / "summary.json").unlink()
    again = run_sweep(base, points, variants, tmp_path / "out", workers=1)
    assert sum(not r["cached"] for r in again) == 3          # the lost point and the two failures rerun
    assert next(r for r in again if r["key"] == done["key"])["summary"] == done["summary"]
    proc = run_cli("sweep", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0 and proc.stderr.count("failed:") == 2
    table = list(csv.DictReader((tmp_path / "out" / "points.csv").open()))
    assert sum(bool(r["error"]) for r in table) == 2


def test_cached_rerun_skips_plotting_and_plot_redraws(tmp_path):
    sweep = _sweep_file(tmp_path)
    out = tmp_path / "out"
    assert run_cli("sweep", str(sweep), "-o", str(out)).returncode == 0
    stamp = (out / "curves.png").stat().st_mtime_ns
    proc = run_cli("sweep", str(sweep), "-o", str(out))
    assert proc.returncode == 0 and "curves.png" not in proc.stdout
    assert (out / "curves.png").stat().st_mtime_ns == stamp
    report = (out / "report.md").read_text()
    (out / "curves.png").unlink()
    (out / "report.md").unlink()
    proc = run_cli("plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "curves.png").stat().st_size > 0 and (out / "report.md").read_text() == report
    assert "workload.arrival.rate" in report and "block_size=32" in report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_executor_gives_the_same_points_as_local(tmp_path):
    """A local Ray head started here, the sweep sent to its address, points.csv byte-identical; the
    points run the engine presets they name, exactly as `simulate()` does."""
    ray_cli = Path(sys.executable).with_name("ray")
    assert ray_cli.exists(), "Ray is part of the test extra (pip install -e '.[test]')"
    sweep = _sweep_file(tmp_path, zipped=", engine.preset: [tgi, vllm-v1]")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}   # a private test cluster
    temp = Path("/tmp") / f"simkv-ray-{os.getpid()}"   # Ray's socket paths must stay short
    # in a session of its own, so that this cluster's processes (and only them: `ray stop` would also
    # stop a Ray another test worker started) are one process group, killed at the end at once
    start = subprocess.Popen([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                              f"--temp-dir={temp}", "--disable-usage-stats", "--node-ip-address=127.0.0.1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        started = start.communicate(timeout=120)[0]   # its daemons log to files: the pipe closes when it returns
        assert start.returncode == 0, started
        proc = cli_process("sweep", str(sweep), "-o", str(tmp_path / "ray"), "--executor", "ray",
                    "--address", f"127.0.0.1:{port}", env=env)
        assert proc.returncode == 0, proc.stderr
    finally:
        try:
            os.killpg(start.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)
    proc = run_cli("sweep", str(sweep), "-o", str(tmp_path / "local"), "--executor", "local", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ray" / "points.csv").read_bytes() == (tmp_path / "local" / "points.csv").read_bytes()
    assert len((tmp_path / "ray" / "points.csv").read_text().splitlines()) == 5
    import json

    import simkv
    for row in csv.DictReader((tmp_path / "ray" / "points.csv").open()):
        summary = json.loads((tmp_path / "ray" / "points" / row["key"] / "summary.json").read_text())
        assert summary["setup"]["scheduler"] == {"tgi": "tgi", "vllm-v1": "chunked"}[row["engine.preset"]]
        sc = simkv.load_scenario(QUICK, ["run.num_requests=80", "run.warmup_s=0", *(
            f"{k}={row[k]}" for k in ("workload.arrival.rate", "engine.block_size", "engine.max_num_seqs", "engine.preset"))])
        assert summary == json.loads(json.dumps(simkv.simulate(sc).summary))


def test_ray_errors_are_clear(tmp_path):
    sweep = _sweep_file(tmp_path)
    proc = run_cli("sweep", str(sweep), "--address", "127.0.0.1:1")
    assert proc.returncode == 2 and "--executor ray" in proc.stderr
    proc = cli_process("sweep", str(sweep), "-o", str(tmp_path / "o"), "--executor", "ray", "--address", f"127.0.0.1:{_free_port()}")
    assert proc.returncode == 2 and "ray start --head" in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_over_a_categorical_field_draws(tmp_path):
    """`sweep:` over engine presets: the curves put the presets on the x axis."""
    text = QUICK.read_text().replace("  allocator: paged\n", "")
    (tmp_path / "s.yaml").write_text(text + "sweep: {field: engine.preset, values: [vllm-v1, tgi]}\n")
    proc = run_cli("run", str(tmp_path / "s.yaml"), "-q", "-o", str(tmp_path / "out"), "--set", "run.num_requests=60",
                "--set", "run.warmup_s=0")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "sweep.csv").open()))
    assert [r["engine.preset"] for r in rows] == ["vllm-v1", "tgi"]
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 0 and "tgi" in (tmp_path / "out" / "report.md").read_text()
