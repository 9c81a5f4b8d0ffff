"""Validation mode on the CPU: the paged attention kernel against dense attention, the KV stores
through preemption and resume, the mini engine replaying simkv's exact schedules (paged ==
contiguous outputs, every token once), the timeline, and `simkv validate --device cpu`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch", reason="validation needs the gpu extra (CPU torch is enough)")

import simkv  # noqa: E402
from conftest import ROOT, run_cli  # noqa: E402
from simkv.gpu.kernels import dense_attention, paged_decode_attention  # noqa: E402
from simkv.gpu.kv_store import ContiguousKVStore, PagedKVStore  # noqa: E402
from simkv.gpu.mini_model import MiniModel  # noqa: E402
from simkv.gpu.replay import replay  # noqa: E402
from simkv.gpu.schedule import record_schedule  # noqa: E402
from simkv.gpu.timeline import replay_timeline  # noqa: E402
from simkv.specs import ShardDims  # noqa: E402

HEADS, KV_HEADS, D = 8, 2, 32
SCALE = D ** -0.5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _fill(store: PagedKVStore, rid: int, k: torch.Tensor, v: torch.Tensor) -> None:
    store.ensure(rid, len(k))
    store.write(0, store.slots(rid, torch.arange(len(k))), k, v)


@pytest.mark.parametrize("block_size", [1, 16, 32])
def test_paged_decode_kernel_equals_dense_attention(block_size):
    g = torch.Generator().manual_seed(block_size)
    lengths = [1, 7, block_size, block_size + 1, 300, 45]           # ragged, block edges included
    store = PagedKVStore(1, sum(-(-n // block_size) for n in lengths) + 8, block_size, KV_HEADS, D, torch.float32, "cpu")
    store.free_blocks = [int(i) for i in torch.randperm(len(store.free_blocks), generator=g)]   # scattered blocks
    keys = {}
    for rid, n in enumerate(lengths):
        k, v = torch.randn(n, KV_HEADS, D, generator=g), torch.randn(n, KV_HEADS, D, generator=g)
        _fill(store, rid, k, v)
        keys[rid] = (k, v)
    q = torch.randn(len(lengths), HEADS, D, generator=g)
    rids = list(range(len(lengths)))
    ctx = torch.tensor(lengths)
    out = paged_decode_attention(q, store.k[0], store.v[0], store.block_table(rids), ctx, SCALE)
    for rid, n in enumerate(lengths):
        k, v = keys[rid]
        ref = dense_attention(q[rid:rid + 1], k, v, torch.tensor([n - 1]), SCALE)
        assert _rel(out[rid:rid + 1], ref) < 1e-5


@pytest.mark.parametrize("block_size", [1, 16, 32])
def test_paged_attention_after_preemption_and_resume(block_size):
    """Swap a sequence out, let others take (and overwrite) its blocks, swap it back into other
    blocks: attention over it is unchanged. A recompute-preempted sequence is rebuilt exactly."""
    g = torch.Generator().manual_seed(100 + block_size)
    store = PagedKVStore(1, 2 * -(-200 // block_size) + 2, block_size, KV_HEADS, D, torch.float32, "cpu")
    k, v = torch.randn(200, KV_HEADS, D, generator=g), torch.randn(200, KV_HEADS, D, generator=g)
    _fill(store, 0, k, v)
    before = list(store.tables[0])
    host = store.swap_out(0, 200)
    _fill(store, 1, torch.randn(200, KV_HEADS, D, generator=g), torch.randn(200, KV_HEADS, D, generator=g))
    store.swap_in(0, host)
    assert store.tables[0] != before or block_size == 200          # resumed in other blocks
    q = torch.randn(1, HEADS, D, generator=g)
    out = paged_decode_attention(q, store.k[0], store.v[0], store.block_table([0]), torch.tensor([200]), SCALE)
    assert _rel(out, dense_attention(q, k, v, torch.tensor([199]), SCALE)) < 1e-5
    store.free(0)                                                     # recompute: freed, written again
    _fill(store, 0, k, v)
    out = paged_decode_attention(q, store.k[0], store.v[0], store.block_table([0]), torch.tensor([200]), SCALE)
    assert _rel(out, dense_attention(q, k, v, torch.tensor([199]), SCALE)) < 1e-5


def _tight(preset: str, preemption: str | None = None) -> simkv.Scenario:
    sets = ["run.num_requests=20", "run.warmup_s=0", "engine.num_gpu_blocks=24", "engine.max_model_len=256",
            f"engine.preset={preset}", "engine.prefix_caching=false", "workload.arrival.rate=30",
            "workload.prompt_tokens={dist: uniform, low: 20, high: 120}",  # short: seconds on any CPU
            "workload.output_tokens={dist: uniform, low: 5, high: 40}"]
    if preemption:
        sets.append(f"engine.preemption={preemption}")
    return simkv.load_scenario(ROOT / "scenarios" / "quickstart.yaml", sets)


SHAPE = ShardDims(num_layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=256, gated=True, tp=1)


@pytest.mark.parametrize("preset,preemption", [("vllm-v1", None), ("vllm-v0", "swap"), ("vllm-v0", "recompute"),
                                               ("tgi", None), ("sarathi-serve", None)])
def test_mini_engine_replays_the_schedule_paged_equals_contiguous(preset, preemption):
    trace = record_schedule(_tight(preset, preemption))
    preempted = sum(len(s.preempted_ids) for s in trace.steps)
    if preset != "tgi":
        assert preempted > 0, "the tight cache must force preemptions"
    model = MiniModel(SHAPE)
    paged = replay(trace, model, PagedKVStore(2, 48, 16, 2, 16, torch.float32, "cpu"))
    contiguous = replay(trace, model, ContiguousKVStore(2, 31 * 512, 512, 2, 16, torch.float32, "cpu"))
    assert paged.outputs == contiguous.outputs                           # identical generated tokens
    served = ~np.isnan(np.asarray(trace.result.requests["first_token_s"], dtype=float))
    for rid, toks in paged.outputs.items():                              # every token exactly once
        assert len(toks) == trace.output_tokens[rid]
    assert set(paged.outputs) == set(np.flatnonzero(served).tolist())
    assert paged.resampled == 0 and len(paged.seconds) == len(trace.steps)
    assert (paged.swaps if preemption == "swap" else paged.recomputes) == preempted


def test_timeline_with_simulated_durations_reproduces_the_simulation():
    trace = record_schedule(_tight("vllm-v0", "swap"))
    tl = replay_timeline(trace, np.array([s.duration_s for s in trace.steps]))
    r = trace.result.requests
    np.testing.assert_allclose(tl["first_token_s"], np.asarray(r["first_token_s"], dtype=float), atol=1e-9)
    np.testing.assert_allclose(tl["finish_s"], np.asarray(r["finish_s"], dtype=float), atol=1e-9)


def test_validate_cli_on_cpu(tmp_path):
    proc = run_cli("validate", "scenarios/validation-small.yaml", "--device", "cpu",
                   "--requests", "16", "--set", "engine.num_gpu_blocks=40", "--set", "engine.max_model_len=512",
                   "--set", "engine.max_num_batched_tokens=256",      # short sequences: seconds on any CPU
                   "--set", "workload.prompt_tokens={dist: lognormal, mean: 120, p99: 400, max: 400}",
                   "--set", "workload.output_tokens={dist: exponential, mean: 40, max: 120}",
                   "--set", "workload.arrival.rate=20000",   # a tiny model's steps are microseconds: a burst
                   "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["outputs_identical_paged_vs_contiguous"] and s["tokens_generated"] == s["tokens_expected"] > 0
    assert sum(s["preemptions"].values()) > 0
    assert set(s["step_time_error"]) == {"paged", "contiguous"} and s["step_time_error"]["paged"]["steps"] == s["steps"]
    for name in ("report.md", "steps.csv", "validation.png", "validation.svg"):
        assert (tmp_path / name).stat().st_size > 0
    assert "predicted vs measured" in (tmp_path / "report.md").read_text()
    assert s["dtype"] == "float32" and s["model"]["hidden_size"] == 64            # tiny and fp32 on the CPU
    for phase in ("recorded", "paged KV store: warm-up", "contiguous KV store: warm-up", f"{s['steps']}/{s['steps']} steps"):
        assert phase in proc.stderr, proc.stderr                                  # progress on stderr


def test_step_progress_reports_every_few_seconds_and_at_the_end(monkeypatch):
    from simkv.gpu import validate as v
    clock = iter([0.0, 1.0, 6.0, 7.0, 8.0])
    monkeypatch.setattr(v.time, "perf_counter", lambda: next(clock))
    lines = []
    progress = v.StepProgress(lines.append, "paged KV store", every_s=5.0)
    for done in (1, 2, 3, 4):
        progress(done, 4)
    assert lines == ["paged KV store: 2/4 steps (50%) in 6.0 s, ~6 s left", "paged KV store: 4/4 steps (100%) in 8.0 s"]


@pytest.mark.slow
def test_validate_cli_on_cpu_with_the_models_real_shapes(tmp_path):
    proc = run_cli("validate", "scenarios/validation-small.yaml", "--device", "cpu",
                   "--shapes", "model", "--layers", "1", "--requests", "4", "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["model"]["hidden_size"] == 4096 and s["model"]["num_layers"] == 1
    assert s["outputs_identical_paged_vs_contiguous"] and s["tokens_generated"] == s["tokens_expected"] > 0


def test_validate_errors_are_clear(tmp_path, monkeypatch):
    proc = run_cli("validate", "scenarios/validation-small.yaml", "--device", "cpu",
                   "--set", "hardware.tensor_parallel=2")
    assert proc.returncode == 2 and "tensor_parallel" in proc.stderr and "Traceback" not in proc.stderr
    if not torch.cuda.is_available():
        proc = run_cli("validate", "scenarios/validation-small.yaml", "--gpu")
        assert proc.returncode == 2 and "--device cpu" in proc.stderr
    from simkv.errors import SimkvError
    from simkv.gpu import validate as v
    monkeypatch.setitem(sys.modules, "torch", None)                     # as without the gpu extra
    with pytest.raises(SimkvError, match=r"simkv\[gpu\]"):
        v.torch_or_error()


def test_core_never_imports_torch():
    code = ("import sys, simkv; from simkv.simulate import simulate; from simkv import cli; from simkv.studies import sweep, reproduce; "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert out == ["False", "False"]


def _check_reference_formats(out):
    shipped = ROOT / "simkv" / "cost" / "data" / "h100"
    for table in ("gemm.csv", "elementwise.csv", "attention.csv", "layer_steps.csv"):
        lines = (out / table).read_text().splitlines()
        assert lines[0] == (shipped / table).read_text().splitlines()[0]          # the same columns
        ms = [float(row.split(",")[-2 if table == "gemm.csv" else -1]) for row in lines[1:]]
        assert ms and min(ms) > 0
    kinds = {row.split(",")[2] for row in (out / "layer_steps.csv").read_text().splitlines()[1:]}
    assert kinds == {"prefill", "decode", "mixed"}
    device = json.loads((out / "device.json").read_text())
    assert set(json.loads((shipped / "device.json").read_text())) <= set(device)
    return device


def _simulate_on(tmp_path, gpu_yaml: str) -> dict:
    (tmp_path / "s.yaml").write_text(
        f"name: on-this-cpu\ncatalog_files: [{gpu_yaml}]\nmodel: llama3-8b\nhardware: {{gpu: this-cpu}}\n"
        "engine: {preset: vllm-v1, max_model_len: 2048, num_gpu_blocks: 400}\n"
        "workload:\n  arrival: {process: poisson, rate: 0.5}\n  prompt_tokens: {dist: fixed, value: 256}\n"
        "  output_tokens: {dist: fixed, value: 16}\nrun: {num_requests: 10}\n")
    return simkv.simulate(simkv.load_scenario(tmp_path / "s.yaml")).summary


def test_calibrate_on_cpu_defaults_to_a_tiny_float32_shape_with_progress(tmp_path):
    """`simkv calibrate --device cpu` measures a tiny layer in float32 (seconds on any CPU, no
    emulated bf16 matmuls), writes the reference formats, reports each phase on stderr, and its
    gpu.yaml is an honest target: the measured ceilings (roofline), no calibration of real models."""
    out = tmp_path / "calib"
    proc = run_cli("calibrate", "--device", "cpu", "--name", "this-cpu",
                   "-o", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    device = _check_reference_formats(out)
    gemm = (out / "gemm.csv").read_text().splitlines()[1:]
    assert {row.split(",")[0] for row in gemm} == {"tiny-cpu"} and {row.split(",")[5] for row in gemm} == {"float32"}
    assert "float32" in device["note"]
    for phase in ("gemm (", "elementwise (", "attention (", "layer_steps (", "device ceilings", "done in"):
        assert phase in proc.stderr, proc.stderr                      # progress, not minutes of silence
    assert json.loads((out / "compare-h100.json").read_text())["layer_steps"]["rows"] == 0   # no shared shapes
    assert "calibration" not in yaml.safe_load((out / "gpu.yaml").read_text())["gpus"]["this-cpu"]
    summary = _simulate_on(tmp_path, "calib/gpu.yaml")
    assert summary["setup"]["cost_model"] == "roofline (no calibration measurements for 'this-cpu')"
    assert summary["requests"]["completed"] == 10


def test_a_calibration_folder_is_a_cost_model_target_through_its_catalog_entry(tmp_path):
    """The gpu.yaml entry calibrate writes for real shapes (`calibration: .`), over a folder of
    llama3-8b measurements (the shipped H100 ones here: measuring them on a CPU is the slow test)."""
    import shutil

    import yaml as _yaml

    from simkv.gpu.calibrate import _catalog_entry
    folder = tmp_path / "calib"
    shutil.copytree(ROOT / "simkv" / "cost" / "data" / "h100", folder)
    device = json.loads((folder / "device.json").read_text())
    device.setdefault("h2d_pinned_GBps", 55.0)
    device.setdefault("d2h_pinned_GBps", 55.0)
    (folder / "gpu.yaml").write_text(_yaml.safe_dump({"gpus": {"this-cpu": _catalog_entry(device)}}, sort_keys=False))
    summary = _simulate_on(tmp_path, "calib/gpu.yaml")
    assert summary["setup"]["cost_model"] == "calibrated (this-cpu, calib/ measurements)"
    assert summary["requests"]["completed"] == 10


@pytest.mark.slow
def test_calibrate_on_cpu_real_shapes_writes_the_reference_formats_and_makes_a_cost_target(tmp_path):
    """Real llama3-8b shapes in bf16 on the CPU: hours where bf16 matmuls are emulated (no AVX-512 BF16 / AMX)."""
    out = tmp_path / "calib"
    proc = run_cli("calibrate", "--device", "cpu", "--shapes", "real",
                   "--name", "this-cpu", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    shipped = ROOT / "simkv" / "cost" / "data" / "h100"
    for table in ("gemm.csv", "elementwise.csv", "attention.csv", "layer_steps.csv"):
        lines = (out / table).read_text().splitlines()
        assert lines[0] == (shipped / table).read_text().splitlines()[0]          # the same columns
        ms = [float(row.split(",")[-2 if table == "gemm.csv" else -1]) for row in lines[1:]]
        assert ms and min(ms) > 0
    kinds = {row.split(",")[2] for row in (out / "layer_steps.csv").read_text().splitlines()[1:]}
    assert kinds == {"prefill", "decode", "mixed"}
    device = json.loads((out / "device.json").read_text())
    assert set(json.loads((shipped / "device.json").read_text())) <= set(device)
    assert json.loads((out / "compare-h100.json").read_text())["layer_steps"]["rows"] > 0
    # the folder is a cost-model target through its catalog entry, without code changes
    (tmp_path / "s.yaml").write_text(
        "name: on-this-cpu\ncatalog_files: [calib/gpu.yaml]\nmodel: llama3-8b\nhardware: {gpu: this-cpu}\n"
        "engine: {preset: vllm-v1, max_model_len: 2048, num_gpu_blocks: 400}\n"
        "workload:\n  arrival: {process: poisson, rate: 0.5}\n  prompt_tokens: {dist: fixed, value: 256}\n"
        "  output_tokens: {dist: fixed, value: 16}\nrun: {num_requests: 10}\n")
    result = simkv.simulate(simkv.load_scenario(tmp_path / "s.yaml"))
    assert result.summary["setup"]["cost_model"] == "calibrated (this-cpu, calib/ measurements)"
    assert result.summary["requests"]["completed"] == 10
    (tmp_path / "steps.csv").write_text("prefill_seqs,prefill_len,decode_batch,decode_ctx\n1,64,0,0\n0,0,4,512\n")
    proc = run_cli("step-time", "--gpu", "this-cpu", "--catalog",
                   str(out / "gpu.yaml"), "--batches", str(tmp_path / "steps.csv"))
    assert proc.returncode == 0, proc.stderr
    predicted = [float(line.split(",")[-1]) for line in proc.stdout.splitlines()[1:]]
    assert len(predicted) == 2 and min(predicted) > 0


def test_compare_tables_of_identical_measurements_is_zero(tmp_path):
    import shutil

    from simkv.gpu.calibrate import compare_tables
    shutil.copytree(ROOT / "simkv" / "cost" / "data" / "h100", tmp_path / "h100-copy")
    result = compare_tables(tmp_path / "h100-copy", "h100")
    assert all(c["rows"] > 50 and c["median_abs"] == 0 and c["p90_abs"] == 0 for c in result.values())


def test_bad_calibration_folder_is_a_clear_error(tmp_path):
    (tmp_path / "gpu.yaml").write_text("gpus:\n  mine: {memory_gib: 80, hbm_bandwidth_gbps: 3000, bf16_tflops: 900,"
                                       " host_link_gbps: 55, calibration: nowhere}\n")
    (tmp_path / "s.yaml").write_text((ROOT / "scenarios" / "quickstart.yaml").read_text().replace("gpu: h100", "gpu: mine")
                                     + "catalog_files: [gpu.yaml]\n")
    proc = run_cli("run", str(tmp_path / "s.yaml"), "-q", "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "simkv calibrate" in proc.stderr and "Traceback" not in proc.stderr


TRITON_CHECK = r'''
import json, sys, torch
from simkv.gpu.kernels import dense_attention
from simkv.gpu.kv_store import ContiguousKVStore, PagedKVStore
from simkv.gpu.triton_kernels import paged_decode_attention_triton
errors = {}
for bs in (1, 16, 32):
    g = torch.Generator().manual_seed(bs)
    lengths = [1, 7, bs, bs + 1, min(70, 3 * bs + 6), min(45, 2 * bs + 5)]   # ragged, several blocks each (the interpreter walks them one by one)
    paged = PagedKVStore(1, sum(-(-n // bs) for n in lengths) + 8, bs, 2, 32, torch.float32, "cpu")
    paged.free_blocks = [int(i) for i in torch.randperm(len(paged.free_blocks), generator=g)]
    contiguous = ContiguousKVStore(1, 128 * len(lengths), 128, 2, 32, torch.float32, "cpu")
    kv = {}
    for rid, n in enumerate(lengths):
        k, v = torch.randn(n, 2, 32, generator=g), torch.randn(n, 2, 32, generator=g)
        for store in (paged, contiguous):
            store.ensure(rid, n)
            store.write(0, store.slots(rid, torch.arange(n)), k, v)
        kv[rid] = (k, v)
    q = torch.randn(len(lengths), 4, 32, generator=g)   # 4 query heads on 2 KV heads (GQA)
    rids, ctx = list(range(len(lengths))), torch.tensor(lengths)
    outs = [paged_decode_attention_triton(q, *store.decode_view(0, rids), ctx, 32 ** -0.5) for store in (paged, contiguous)]
    worst = 0.0
    for rid, n in enumerate(lengths):
        ref = dense_attention(q[rid:rid + 1], *kv[rid], torch.tensor([n - 1]), 32 ** -0.5)
        worst = max(worst, *(float((o[rid:rid + 1] - ref).abs().max() / ref.abs().max()) for o in outs))
    errors[bs] = worst
print(json.dumps({'errors': errors}))
'''


def test_triton_paged_kernel_equals_dense_attention_in_the_interpreter(triton_interpreted):
    """The GPU kernel itself, run by Triton's CPU interpreter: paged blocks and a contiguous
    region read in place, ragged contexts, block sizes 1, 16, 32."""
    errors = triton_interpreted["errors"]
    assert set(errors) == {"1", "16", "32"} and max(errors.values()) < 1e-5, errors


TRITON_ENGINE = r'''
import json, sys, torch
sys.path.insert(0, "tests")
import simkv
from conftest import ROOT
from simkv.gpu.kv_store import ContiguousKVStore, PagedKVStore
from simkv.gpu.mini_model import MiniModel
from simkv.specs import ShardDims
from simkv.gpu.replay import replay
from simkv.gpu.schedule import record_schedule
TINY = ShardDims(num_layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=256, gated=True, tp=1)
sc = simkv.load_scenario(ROOT / "scenarios" / "quickstart.yaml", ["run.num_requests=5", "run.warmup_s=0",
    "engine.max_model_len=256", "workload.arrival.rate=1000", "workload.prompt_tokens={dist: uniform, low: 5, high: 40}",
    "workload.output_tokens={dist: uniform, low: 3, high: 8}"])
trace = record_schedule(sc)
model = MiniModel(TINY, decode_kernel="triton")
a = replay(trace, model, PagedKVStore(2, 40, 16, 2, 16, torch.float32, "cpu"))
b = replay(trace, model, ContiguousKVStore(2, 6 * 256, 256, 2, 16, torch.float32, "cpu"))
gather = replay(trace, MiniModel(TINY, decode_kernel="gather"),
                PagedKVStore(2, 40, 16, 2, 16, torch.float32, "cpu"))
print(json.dumps({"kernel": model.decode_kernel, "same": a.outputs == b.outputs, "as_gather": a.outputs == gather.outputs,
                  "tokens": sum(map(len, a.outputs.values())), "expected": int(trace.output_tokens.sum())}))
'''


@pytest.fixture(scope="module")
def triton_interpreted() -> dict:
    """Both Triton scripts above in one process with TRITON_INTERPRET=1 (read when triton is
    imported, hence a process of its own; one process, not two: torch and triton import once)."""
    pytest.importorskip("triton")
    import os
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK + TRITON_ENGINE], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    return {key: value for line in lines for key, value in line.items()}


def test_mini_engine_with_the_triton_kernel_in_the_interpreter(triton_interpreted):
    r = triton_interpreted
    assert r["kernel"] == "triton" and r["same"] and r["tokens"] == r["expected"] > 0
    assert r["as_gather"]              # float32, a few dozen tokens: the two kernels pick the same tokens


def test_gpu_calibration_grid_is_the_reference_grid():
    """On a GPU, calibrate measures the shapes of the shipped tables (all, or every third)."""
    from simkv.files.calibration import load_tables
    from simkv.gpu.calibrate import _grid
    ref = load_tables("h100")
    full = _grid(["llama3-8b"], "h100", quick=False, cpu=False)
    quick = _grid(["llama3-8b"], "h100", quick=True, cpu=False)
    mine = lambda cols: int((cols["model"] == "llama3-8b").sum())
    mine_gemm = ref.gemm["model"] == "llama3-8b"
    fp8_shapes = {(m, op) for m, op, dt in zip(ref.gemm["m"][mine_gemm], ref.gemm["op"][mine_gemm], ref.gemm["dtype"][mine_gemm])
                  if dt == "fp8_e4m3"}
    assert len(full["gemm"]) == int((mine_gemm & (ref.gemm["dtype"] == "bfloat16")).sum()) + len(fp8_shapes)
    assert fp8_shapes and {g[2] for g in full["gemm"]} == {"bfloat16", "fp8_e4m3"}
    assert len(full["attention"]) == mine(ref.attention) and len(full["layer_steps"]) == mine(ref.layer_steps)
    assert len(full["elementwise"]) == mine(ref.elementwise)
    assert 0 < len(quick["gemm"]) < len(full["gemm"]) and {s[0] for s in quick["layer_steps"]} == {"prefill", "decode", "mixed"}
    assert {op for _, op, _ in quick["gemm"]} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"}
