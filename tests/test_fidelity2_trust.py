"""Issue 16, second part: users' own step tables, the host-overhead model, prediction intervals and
the vLLM parity harness (the parts that run without vLLM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from simkv.studies.step_time import plan_from_shape
from simkv.sched.base import StepPlan
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
HEADER = "prefill_seqs,prefill_len,decode_batch,decode_ctx,tokens_per_seq,ms\n"


def _scenario(tmp_path: Path, cost, n: int = 200, **engine) -> Path:
    raw = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    raw["run"]["num_requests"] = n
    raw["run"]["warmup_s"] = 1
    raw["engine"].update(engine)
    if cost is not None:
        raw["cost"] = cost
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args, cwd=None):
    return run_cli(*args, cwd=cwd, timeout=120)


# ------------------------------------------------------------------ (1) user step tables

def _planar(b, c, ps=0, pl=0):   # an independent step-time law, exactly planar in the table's axes
    return 3.0 + 0.02 * b + 4e-5 * b * c + 0.01 * ps * pl + 2e-7 * ps * pl * (pl + 1) / 2


def _planar_table(path: Path) -> Path:
    lines = [HEADER]
    for b in (1, 8, 64, 256):
        for c in (1, 512, 4096, 8192):
            lines.append(f"0,0,{b},{c},,{_planar(b, c):.10g}\n")
    for s in (1, 4):
        for L in (1, 256, 2048, 8192):
            lines.append(f"{s},{L},0,0,,{_planar(0, 0, s, L):.10g}\n")
    path.write_text("".join(lines))
    return path


def _table_cost(path: Path, **kw):
    from simkv.cost.step_table import StepTableCost
    from simkv.files.step_table import read_step_table

    class _NoSwap:
        def transfer_seconds(self, plan):
            return 0.0

        def sources(self):
            return {"swap": "n/a"}
    return StepTableCost(read_step_table(path), _NoSwap(), **kw)


def test_step_table_exact_at_rows_and_on_a_planar_law(tmp_path):
    cost = _table_cost(_planar_table(tmp_path / "t.csv"))
    # every measured row comes back exactly
    assert cost.seconds(plan_from_shape(0, 0, 64, 4096)) == pytest.approx(_planar(64, 4096) / 1e3, rel=1e-9)
    assert cost.seconds(plan_from_shape(4, 2048, 0, 0)) == pytest.approx(_planar(0, 0, 4, 2048) / 1e3, rel=1e-9)
    # between rows a planar law is reproduced (piecewise-linear interpolation is exact on a plane)
    for b, c in ((3, 100), (100, 3000), (200, 7000)):
        assert cost.seconds(plan_from_shape(0, 0, b, c)) == pytest.approx(_planar(b, c) / 1e3, rel=1e-6)
    # heterogeneous contexts: the time of the total KV read
    plan = StepPlan(decode_ids=np.arange(2), decode_ctx=np.array([1000, 3000]))
    assert cost.seconds(plan) == pytest.approx(_planar(2, 2000) / 1e3, rel=1e-6)
    # beyond the table (batch 512): the fitted plane continues the law, and the step is counted
    assert cost.use.extrapolated == 0
    assert cost.seconds(plan_from_shape(0, 0, 512, 1000)) == pytest.approx(_planar(512, 1000) / 1e3, rel=1e-6)
    assert cost.use.extrapolated == 1
    run = cost.decode_run_seconds(np.array([100, 200, 300]), 5)
    assert run == pytest.approx([_planar(3, 200 + k) / 1e3 for k in range(5)], rel=1e-6)
    assert "user table" in cost.sources()["step_table"] and "1 of" in cost.sources()["step_table"]


def test_step_table_reject_names_the_shape(tmp_path):
    from simkv.errors import SimkvError
    cost = _table_cost(_planar_table(tmp_path / "t.csv"), extrapolate="reject")
    cost.seconds(plan_from_shape(0, 0, 10, 1000))
    with pytest.raises(SimkvError, match="outside the shapes"):
        cost.seconds(plan_from_shape(0, 0, 512, 1000))


def test_step_table_mixed_rows_correct_the_composition(tmp_path):
    path = _planar_table(tmp_path / "t.csv")
    plain = _table_cost(path)
    plan = plan_from_shape(1, 512, 32, 1024)
    composed = plain.seconds(plan)
    with path.open("a") as f:
        f.write(f"1,512,32,1024,,{composed * 1e3 * 1.2:.10g}\n")
    fixed = _table_cost(path)
    assert fixed.mixed_factor == pytest.approx(1.2, rel=1e-6)
    assert fixed.seconds(plan) == pytest.approx(composed * 1.2, rel=1e-6)


def test_step_table_from_the_calibrated_model_simulates_like_it(tmp_path):
    """A table tabulated from the calibrated H100 model (an independent grid of its predictions)
    gives nearly the calibrated model's results."""
    from simkv.studies.step_time import cost_model
    from simkv.files.scenario_file import load_scenario
    from simkv.simulate import simulate
    m, _ = cost_model("h100", "llama3-8b")
    lines = [HEADER]
    for b in (1, 4, 16, 64, 128, 256):
        for c in (1, 256, 1024, 4096, 8192):
            lines.append(f"0,0,{b},{c},,{m.seconds(plan_from_shape(0, 0, b, c)) * 1e3:.8g}\n")
    for s in (1, 2, 4, 8):
        for L in (1, 64, 256, 1024, 2048, 4096, 8192):
            if s * L <= 16384:
                lines.append(f"{s},{L},0,0,,{m.seconds(plan_from_shape(s, L, 0, 0)) * 1e3:.8g}\n")
    (tmp_path / "steps.csv").write_text("".join(lines))
    table = simulate(load_scenario(_scenario(tmp_path, {"table": "steps.csv"}))).summary
    cal = simulate(load_scenario(_scenario(tmp_path, None))).summary
    assert table["setup"]["cost_sources"]["step_table"].startswith("user table")
    for key in ("tpot", "e2e"):
        a, b = table["latency_s"][key]["p50"], cal["latency_s"][key]["p50"]
        assert a == pytest.approx(b, rel=0.10), key


@pytest.mark.parametrize("body, needle", [
    ("prefill_seqs,prefill_len,decode_batch,ms\n0,0,1,2\n", "missing column(s) decode_ctx"),
    (HEADER + "0,0,1,10,,abc\n", "not a number"),
    (HEADER + "0,0,1,10,,5\n", "no prefill-only"),
    (HEADER + "0,0,1,10,,5\n1,100,0,0,200,5\n", "tokens_per_seq 200"),
    (HEADER + "0,0,1,0,,5\n", "is not a step"),
    (HEADER + "0,0,1.5,10,,5\n", "decode_batch is '1.5'"),
    (HEADER + "0,0,1,10,,0\n", "ms is 0"),
    (HEADER, "no rows"),
])
def test_bad_step_tables_are_clear_errors(tmp_path, body, needle):
    (tmp_path / "steps.csv").write_text(body)
    proc = _cli("run", str(_scenario(tmp_path, {"table": "steps.csv"}, n=20)), "-o", str(tmp_path / "o"), "-q",
                "--no-figures")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("simkv: error: ") and "cost.table" in proc.stderr and "; fix: " in proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_missing_step_table_is_a_clear_error(tmp_path):
    proc = _cli("run", str(_scenario(tmp_path, {"table": "nope.csv"}, n=20)), "-o", str(tmp_path / "o"), "-q")
    assert proc.returncode == 2 and "cost.table: cannot read the step table" in proc.stderr and "nope.csv" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ (2) host overhead

def test_host_overhead_fixed_plus_per_sequence(tmp_path):
    """Each step costs host_overhead_s + host_per_seq_s x sequences more than the GPU time."""
    from simkv.simulate import make_cost
    from simkv.files.scenario_file import load_scenario
    base = load_scenario(_scenario(tmp_path, None))
    plain, _ = make_cost(base)
    over = load_scenario(_scenario(tmp_path, None, host_overhead_s=0.002, host_per_seq_s=3e-5))
    cost, _ = make_cost(over)
    for shape in ((0, 0, 7, 1000), (2, 300, 5, 100), (1, 50, 0, 0)):
        plan = plan_from_shape(*shape)
        assert cost.seconds(plan) - plain.seconds(plan) == pytest.approx(0.002 + 3e-5 * plan.num_seqs, rel=1e-9)
    run = cost.decode_run_seconds(np.array([10, 20, 30]), 4) - plain.decode_run_seconds(np.array([10, 20, 30]), 4)
    assert run == pytest.approx([0.002 + 9e-5] * 4, rel=1e-9)
    assert "host_per_seq_s 3e-05" in cost.sources()["host_overhead"]
    roof, _ = make_cost(over.model_copy(update={"cost": "roofline"}))
    roof0, _ = make_cost(base.model_copy(update={"cost": "roofline"}))
    plan = plan_from_shape(0, 0, 7, 1000)
    assert roof.seconds(plan) - roof0.seconds(plan) == pytest.approx(0.002 + 7 * 3e-5, rel=1e-9)


def test_host_overhead_defaults_are_cited_or_assumed_zero(tmp_path):
    from simkv.simulate import make_cost
    from simkv.files.scenario_file import load_scenario
    for preset, word in (("sglang", "assumed 0, as published: LMSYS"), ("trtllm", "assumed 0, as published: TensorRT-LLM"),
                         ("vllm-v1", "assumed 0"), ("tgi", "assumed 0")):
        cost, _ = make_cost(load_scenario(_scenario(tmp_path, None, preset=preset)))
        assert cost.host_overhead_s == 0 and cost.host_per_seq_s == 0
        assert word in cost.sources()["host_overhead"], preset


def test_fit_host_overhead_recovers_the_terms(tmp_path):
    rng = np.random.default_rng(1)
    n = rng.integers(1, 256, 200)
    host_ms = 0.8 + 0.012 * n + rng.normal(0, 0.01, len(n))
    gpu = rng.uniform(5, 30, len(n))
    lines = ["num_seqs,step_ms,gpu_ms"] + [f"{a},{g + h:.6f},{g:.6f}" for a, g, h in zip(n, gpu, host_ms)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    proc = _cli("fit-host-overhead", str(tmp_path / "log.csv"), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["host_overhead_s"] == pytest.approx(0.8e-3, rel=0.02)
    assert out["host_per_seq_s"] == pytest.approx(0.012e-3, rel=0.02)
    (tmp_path / "bad.csv").write_text("num_seqs,host_ms\n4,1\n")
    proc = _cli("fit-host-overhead", str(tmp_path / "bad.csv"))
    assert proc.returncode == 2 and "at least two different batch sizes" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ (3) prediction intervals

def test_interval_residuals_are_the_cost_reports_held_out_errors():
    """The factors resampled are exactly `simkv cost report`'s leave-one-out whole-model errors."""
    from simkv.report.cost_validation import validate
    from simkv.studies.intervals import calibration_residuals
    by_kind, what = calibration_residuals("h100")
    w = validate("h100").whole
    for kind in ("decode", "prefill", "mixed"):
        sel = w.kind == kind
        assert sorted(by_kind[kind]) == pytest.approx(sorted(w.measured[sel] / w.loo[sel]), rel=1e-9)
    assert "model_steps.csv" in what


def test_scaled_cost_scales_by_step_kind():
    from simkv.studies.step_time import cost_model
    from simkv.studies.intervals import ScaledCost
    m, _ = cost_model("h100", "llama3-8b")
    s = ScaledCost(m, {"decode": 2.0, "prefill": 3.0, "mixed": 5.0})
    for shape, f in (((0, 0, 4, 100), 2.0), ((1, 100, 0, 0), 3.0), ((1, 100, 4, 100), 5.0)):
        assert s.seconds(plan_from_shape(*shape)) == pytest.approx(f * m.seconds(plan_from_shape(*shape)))
    assert s.decode_run_seconds(np.array([5, 6]), 3) == pytest.approx(2 * m.decode_run_seconds(np.array([5, 6]), 3))


def test_intervals_collapse_without_any_variation(tmp_path):
    """Offline fixed-length requests (no seed effect) on a planar step table (held-out errors all
    exactly 1): every replicate is the run itself, so every interval is [value, value]."""
    from simkv.scenario import Scenario
    from simkv.simulate import simulate
    _planar_table(tmp_path / "steps.csv")
    raw = yaml.safe_load(_scenario(tmp_path, {"table": "steps.csv"}).read_text())
    raw["workload"] = {"arrival": {"process": "offline"}, "prompt_tokens": {"dist": "fixed", "value": 300},
                       "output_tokens": {"dist": "fixed", "value": 20}}
    raw["run"] = {"num_requests": 40, "intervals": 3}
    raw["cost"] = {"table": str(tmp_path / "steps.csv")}
    summary = simulate(Scenario.model_validate(raw)).summary   # (load_scenario: offline arrivals, see report)
    iv = summary["intervals"]
    assert iv["replicates"] == 3 and "step table" in iv["residuals"]
    assert all(f == pytest.approx(1.0) for fs in iv["factors"] for f in fs.values())
    rps = summary["throughput"]["requests_per_s"]
    assert iv["metrics"]["throughput.requests_per_s"] == pytest.approx([rps, rps], rel=1e-9)


def test_cli_intervals_in_summary_and_report(tmp_path):
    proc = _cli("run", str(_scenario(tmp_path, None, n=150)), "-o", str(tmp_path / "o"), "-q", "--intervals", "2")
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    lo, hi = s["intervals"]["metrics"]["latency_s.ttft.p99"]
    assert 0 < lo <= hi and "Prediction intervals" in (tmp_path / "o" / "report.md").read_text()


# ------------------------------------------------------------------ (4) vLLM parity harness (no vLLM here)

def test_parity_needs_vllm_only_when_run(tmp_path):
    """The harness imports vLLM lazily: without it, a clear error (exit 2), and nothing else in
    simkv imports the harness."""
    import simkv.studies.parity as parity
    assert "vllm" not in sys.modules or sys.modules["vllm"] is not None
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    proc = subprocess.run([sys.executable, "-m", "simkv.studies.parity", "-o", str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("simkv: error: parity: vllm is not installed; fix: ")
    assert set(parity.WORKLOADS) == {"chat-poisson", "prefix-heavy", "overload-preemption"}
    users = [p for p in (ROOT / "simkv").rglob("*.py") if "simkv.studies.parity" in p.read_text() and p.name != "parity.py"]
    assert users == []
