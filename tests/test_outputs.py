"""Results files: deterministic, complete, loadable; variants on the identical stream; shipped
scenarios load; the simulation core does no I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest

import simkv
from simkv.result import Result

from conftest import ROOT, cli_process, run_cli, small_scenario


def test_same_seed_gives_byte_identical_summary(tmp_path):
    for out in ("a", "b"):
        proc = cli_process("run", "scenarios/quickstart.yaml", "-q", "-o", str(tmp_path / out), "--no-figures",
                           "--set", "run.num_requests=400")   # two interpreters (hash seeds differ); figures: test_reproduce
        assert proc.returncode == 0, proc.stderr
    a, b = (tmp_path / "a" / "summary.json").read_bytes(), (tmp_path / "b" / "summary.json").read_bytes()
    assert a == b
    assert (tmp_path / "a" / "requests.csv").read_bytes() == (tmp_path / "b" / "requests.csv").read_bytes()
    proc = run_cli("run", "scenarios/quickstart.yaml", "-q", "-o", str(tmp_path / "c"), "--no-figures",
                "--set", "run.num_requests=400", "--set", "run.seed=1")
    assert (tmp_path / "c" / "summary.json").read_bytes() != a


def test_results_folder_has_everything(tmp_path):
    proc = run_cli("run", "scenarios/quickstart.yaml", "-q", "-o", str(tmp_path), "--set", "run.num_requests=300")
    assert proc.returncode == 0, proc.stderr
    for name in ("summary.json", "requests.csv", "timeseries.csv", "report.md", "kv_breakdown.png",
                 "latency_cdf.png", "batch_queue.png", "kv_utilization.png", "scenario.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "KV util" in proc.stdout  # the terminal table
    s = json.loads((tmp_path / "summary.json").read_text())
    for p in ("p50", "p90", "p99", "max"):
        for metric in ("ttft", "tbt", "e2e", "tpot"):
            assert s["latency_s"][metric][p] is not None
    loaded = Result.load(tmp_path)
    assert loaded.summary == s
    assert len(loaded.requests["arrival_s"]) == 300
    ts = loaded.timeseries
    total = sum(ts[k] for k in ("token_tokens", "reserved_tokens", "internal_frag_tokens", "external_frag_tokens", "free_tokens"))
    assert (total == s["kv_cache"]["capacity_tokens"]).all(), "time series breakdown does not sum to capacity"


def test_variants_share_the_request_stream(tmp_path):
    sc = small_scenario(variants=[{"name": "p", "set": {"engine.allocator": "paged"}},
                                  {"name": "c", "set": {"engine.allocator": "contiguous", "engine.reservation": "pow2"}}])
    results = simkv.simulate_all(sc)
    assert list(results) == ["p", "c"]
    np.testing.assert_array_equal(results["p"].requests["arrival_s"], results["c"].requests["arrival_s"])
    np.testing.assert_array_equal(results["p"].requests["output_tokens"], results["c"].requests["output_tokens"])
    assert results["c"].summary["setup"]["reservation"] == "pow2"


def test_time_series_is_bounded():
    sc = small_scenario(run__num_requests=3000, run__time_series_points=50)
    res = simkv.simulate(sc)
    assert 25 <= len(res.timeseries["time_s"]) <= 51
    assert np.all(np.diff(res.timeseries["time_s"]) > 0)


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path):
    if path.parent.name == "sweeps":
        from simkv.studies.sweep import load_sweep
        base, points, _ = load_sweep(path)
        assert base.name and points
        return
    sc = simkv.load_scenario(path)
    assert sc.name


def test_load_scenario_with_overrides_and_catalog_file(tmp_path):
    (tmp_path / "cat.yaml").write_text(
        "models:\n  tiny:\n    num_layers: 2\n    hidden_size: 256\n    num_heads: 4\n    num_kv_heads: 2\n"
        "    head_dim: 64\n    intermediate_size: 512\n    vocab_size: 1000\n    num_params: 3000000\n"
        "    max_position_embeddings: 1024\n    source: test\n")
    text = (ROOT / "scenarios" / "quickstart.yaml").read_text().replace("model: llama3-8b", "model: tiny")
    text = text.replace("max_model_len: 8192", "max_model_len: 1024") + "catalog_files: [cat.yaml]\n"
    (tmp_path / "s.yaml").write_text(text)
    sc = simkv.load_scenario(tmp_path / "s.yaml", ["engine.block_size=32", "run.num_requests=50", "run.warmup_s=0"])
    assert sc.engine.block_size == 32 and sc.model_spec().num_layers == 2
    res = simkv.simulate(sc)
    assert res.summary["requests"]["completed"] + res.summary["requests"]["rejected"] == 50


def test_sweep_runs_every_variant_at_every_value(tmp_path):
    text = (ROOT / "scenarios" / "quickstart.yaml").read_text()
    text += ("sweep: {field: workload.arrival.rate, values: [2, 8]}\n"
             "variants:\n  - {name: paged, set: {engine.allocator: paged}}\n"
             "  - {name: tgi, set: {engine.preset: tgi}}\n")
    (tmp_path / "s.yaml").write_text(text)
    proc = run_cli("run", str(tmp_path / "s.yaml"), "-q", "-o", str(tmp_path / "out"), "--set", "run.num_requests=150",
                "--set", "run.warmup_s=0")
    assert proc.returncode == 0, proc.stderr
    import csv
    rows = list(csv.DictReader((tmp_path / "out" / "sweep.csv").open()))
    assert [(r["workload.arrival.rate"], r["variant"]) for r in rows] == [("2", "paged"), ("2", "tgi"), ("8", "paged"), ("8", "tgi")]
    assert float(rows[2]["requests_per_s"]) > float(rows[0]["requests_per_s"])
    for name in ("sweep.png", "sweep.svg", "report.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "rate_8" / "tgi" / "summary.json").exists()
    points = simkv.simulate_sweep(simkv.load_scenario(tmp_path / "s.yaml", ["run.num_requests=60", "run.warmup_s=0"]))
    assert [v for v, _ in points] == [2, 8] and list(points[0][1]) == ["paged", "tgi"]


def test_bad_sweep_value_names_the_sweep(tmp_path):
    text = (ROOT / "scenarios" / "quickstart.yaml").read_text() + "sweep: {field: workload.arrival.rate, values: [2, -1]}\n"
    (tmp_path / "s.yaml").write_text(text)
    proc = run_cli("run", str(tmp_path / "s.yaml"), "-q", "-o", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "sweep" in proc.stderr and "rate=-1" in proc.stderr and "Traceback" not in proc.stderr


def test_plot_redraws_figures_from_saved_results(tmp_path):
    proc = run_cli("run", "scenarios/paged-vs-contiguous-h100.yaml", "-q", "--no-figures", "-o", str(tmp_path),
                "--set", "run.duration_s=60", "--set", "run.warmup_s=5")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("run", "scenarios/quickstart.yaml", "-q", "-o", str(tmp_path / "single"), "--no-figures",
                "--set", "run.num_requests=100", "--set", "run.warmup_s=0")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "kv_breakdown.png").exists()   # written without figures
    for folder in (tmp_path, tmp_path / "single"):
        proc = run_cli("plot", str(folder))
        assert proc.returncode == 0, proc.stderr
        assert (folder / "kv_breakdown.png").stat().st_size > 0 and (folder / "report.md").exists()
    assert "contiguous-pow2" in (tmp_path / "report.md").read_text()
    proc = run_cli("plot", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "summary.json" in proc.stderr
