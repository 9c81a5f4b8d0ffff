"""`simkv calibrate`: measure, on the present device, the operators and single-layer steps of the
reference engine the way the shipped H100/H200 tables were measured (simkv/cost/data/README.md):
random weights and inputs, medians, L2 flushed between operator repeats, whole-layer steps as
CUDA-graph replays. Writes the same CSVs and device.json, plus gpu.yaml, a catalog entry whose
`calibration:` points at the folder, so the new GPU is a calibrated cost-model target at once.

On a CPU (`--device cpu`) the same code runs a small grid, by default on a tiny Llama-style shape
in float32 (seconds on any CPU: a check of the machinery, for the test suite); `--shapes real`
measures the calibration models' real shapes in bfloat16 there too (slow where the CPU has no
native bf16 matmuls: they are emulated, ~100x slower).
"""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from simkv.files.calibration import calibration_shapes, load_tables
from simkv.errors import SimkvError
from simkv.gpu.validate import cap_cpu_threads, torch_or_error
from simkv.specs import ShardDims

HEADERS = {"gemm.csv": ["model", "op", "m", "k", "n", "dtype", "ms", "tflops"],
           "elementwise.csv": ["model", "op", "m", "ms"],
           "attention.csv": ["model", "kind", "batch", "q_len", "kv_len", "ms"],
           "layer_steps.csv": ["model", "layers", "kind", "prefill_seqs", "prefill_len", "decode_batch", "decode_ctx", "ms"]}

# the CPU grid: every kind of row, small enough for seconds of measurement
CPU_GRID = {"gemm_m": [1, 4, 16, 64], "lm_head_m": [1, 4, 16], "elementwise_m": [1, 16, 64, 256],
            "attention": [("prefill", 1, 16, 16), ("prefill", 1, 64, 64), ("chunk", 1, 16, 64), ("decode", 1, 1, 128),
                          ("decode", 4, 1, 128), ("decode", 4, 1, 512)],
            "layer_steps": [("prefill", 1, 16, 0, 0), ("prefill", 1, 64, 0, 0), ("prefill", 2, 32, 0, 0),
                            ("decode", 0, 0, 1, 128), ("decode", 0, 0, 4, 128), ("decode", 0, 0, 4, 512),
                            ("decode", 0, 0, 8, 256), ("mixed", 1, 32, 4, 128)]}


# `--device cpu --shapes tiny`: a tiny Llama-style layer (the shape simkv validate runs on a CPU).
# Its rows are labelled with this name, which no cost model knows: the folder is a roofline target
# of the measured ceilings (gpu.yaml has no `calibration:`), not a calibrated one.
TINY_NAME = "tiny-cpu"
TINY_SHAPE = ShardDims(num_layers=1, hidden=128, heads=4, kv_heads=2, head_dim=32, intermediate=256, vocab=1024,
                       gated=True, tp=1)
SHAPE_CHOICES = ("tiny", "real")


class Timer:
    """Median time of a function on the device: CUDA events with the L2 flushed before each
    repeat on a GPU (Triton's do_bench when present), wall clock on a CPU."""

    def __init__(self, torch, device: str, repeats: int) -> None:
        self.torch, self.device, self.repeats = torch, device, repeats
        self.cuda = device.startswith("cuda")
        self.flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if self.cuda else None

    def op_ms(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            try:
                from triton.testing import do_bench
                return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
            except ImportError:
                pass
        fn()
        times = []
        for _ in range(self.repeats):
            if self.cuda:
                self.flush.zero_()
                start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                self.torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)

    def graph_ms(self, fn: Callable[[], object], replays: int = 20) -> float:
        """A whole step: captured in a CUDA graph and replayed (no launch gaps), median of replays."""
        if not self.cuda:
            return self.op_ms(fn)
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        times = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)


def _grid(models: list[str], reference: str, quick: bool, cpu: bool) -> dict[str, list]:
    """The shapes to measure: the reference GPU's own rows for these models (so the tables line
    up for comparison), every other one with --quick; a small fixed grid on a CPU."""
    if cpu:
        g = CPU_GRID
        return {"gemm": [(m, op, "bfloat16") for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj") for m in g["gemm_m"]]
                        + [(m, "lm_head", "bfloat16") for m in g["lm_head_m"]],
                "elementwise": [(op, m) for op in ("rmsnorm", "residual_add", "rope", "silu_mul") for m in g["elementwise_m"]],
                "attention": list(g["attention"]), "layer_steps": list(g["layer_steps"])}
    t = load_tables(reference)
    step = 3 if quick else 1
    pick = lambda cols, model: [i for i in range(len(cols["model"])) if cols["model"][i] == model]
    out = {"gemm": [], "elementwise": [], "attention": [], "layer_steps": []}
    for model in models:
        for dtype in ("bfloat16", "fp8_e4m3"):      # the reference repeats its m=16 fp8 rows: measured once here
            shapes = dict.fromkeys((int(t.gemm["m"][i]), str(t.gemm["op"][i]), dtype)
                                   for i in pick(t.gemm, model) if t.gemm["dtype"][i] == dtype)
            out["gemm"] += list(shapes)[::step]
        out["elementwise"] += [(str(t.elementwise["op"][i]), int(t.elementwise["m"][i])) for i in pick(t.elementwise, model)][::step]
        a = t.attention
        out["attention"] += [(str(a["kind"][i]), int(a["batch"][i]), int(a["q_len"][i]), int(a["kv_len"][i]))
                             for i in pick(a, model)][::step]
        s = t.layer_steps
        out["layer_steps"] += [(str(s["kind"][i]), int(s["prefill_seqs"][i]), int(s["prefill_len"][i]),
                                int(s["decode_batch"][i]), int(s["decode_ctx"][i])) for i in pick(s, model)][::max(step - 1, 1)]
    return out


def calibrate(out: Path, device: str = "cuda", models: list[str] | None = None, quick: bool = False,
              reference: str = "h100", name: str | None = None, log: Callable[[str], None] = lambda s: None,
              shapes_kind: str | None = None) -> Path:
    """Measure and write the tables into `out`; returns the folder. `shapes_kind`: "real" (the
    calibration models in bfloat16; the default on a GPU) or "tiny" (a tiny shape in float32;
    the default on a CPU). `log` gets a line per phase (progress)."""
    torch = torch_or_error()
    cpu = device == "cpu"
    if not cpu and not torch.cuda.is_available():
        raise SimkvError("no CUDA GPU is visible to PyTorch", field="--gpu", fix="run on a GPU machine, or use --device cpu")
    shapes_kind = shapes_kind or ("tiny" if cpu and not models else "real")
    if shapes_kind not in SHAPE_CHOICES:
        raise SimkvError(f"unknown shapes '{shapes_kind}'", field="--shapes", fix=f"one of: {', '.join(SHAPE_CHOICES)}")
    tiny = shapes_kind == "tiny"
    shapes = calibration_shapes()
    if tiny:
        if models:
            raise SimkvError("--models measures real shapes", field="--models",
                             fix="add --shapes real (slow on a CPU without native bf16), or drop --models")
        shapes, models = {TINY_NAME: TINY_SHAPE}, [TINY_NAME]
        cap_cpu_threads(torch, device)
    models = models or (["llama3-8b"] if cpu else ["llama3-8b", "llama2-7b", "llama3-70b-tp4"])
    unknown = [m for m in models if m not in shapes]
    if unknown:
        raise SimkvError(f"no calibration shape {unknown}", field="--models", fix=f"choose from {', '.join(shapes)}")
    # the reference engine's precision (on a CPU too, with real shapes); float32 for the tiny shape,
    # which checks the machinery, not the numbers (bf16 matmuls are emulated on CPUs without AVX-512 BF16/AMX)
    dtype = torch.float32 if tiny else torch.bfloat16
    dtype_name = str(dtype).replace("torch.", "")
    timer = Timer(torch, device, repeats=3 if cpu else 20)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator(device=device).manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=dtype)
    rows = {k: [] for k in HEADERS}
    started = time.perf_counter()
    log(f"calibrating {', '.join(models)} on {device} in {dtype_name}"
        f"{' (tiny shape: a check of the machinery, not a calibration of real models)' if tiny else ''}")
    for model in models:
        d = shapes[model]
        grid = _grid([model], reference, quick, cpu)
        if tiny:
            grid["gemm"] = [(m, op, dtype_name) for m, op, _ in grid["gemm"]]
        phase = _Phases(log, model, grid, started)
        q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
        kn = {"qkv_proj": (d.hidden, q + 2 * kv), "o_proj": (q, d.hidden), "gate_up_proj": (d.hidden, 2 * d.intermediate),
              "down_proj": (d.intermediate, d.hidden), "lm_head": (d.hidden, d.vocab)}
        weights: dict = {}
        fp8 = not cpu and torch.cuda.get_device_capability(device) >= (8, 9)
        for m, op, gemm_dtype in grid["gemm"]:
            phase("gemm")
            k, n = kn[op]
            if (op, gemm_dtype) not in weights:
                weights = {(op, gemm_dtype): rand(k, n)}          # one weight alive at a time (lm_head is ~1 GB)
            w = weights[(op, gemm_dtype)]
            if gemm_dtype == "fp8_e4m3":
                if not fp8:
                    continue
                try:
                    ms = timer.op_ms(_fp8_matmul(torch, rand(m, k), w))
                except (RuntimeError, AttributeError) as err:     # torch or the card without fp8 matmuls
                    log(f"fp8 GEMMs skipped: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
                    fp8 = False
                    continue
            else:
                x = rand(m, k)
                ms = timer.op_ms(lambda: x @ w)
            rows["gemm.csv"].append([model, op, m, k, n, gemm_dtype, round(ms, 5),
                                     round(2 * m * k * n / (ms * 1e-3) / 1e12, 2)])
        for op, m in grid["elementwise"]:
            phase("elementwise")
            rows["elementwise.csv"].append([model, op, m, round(timer.op_ms(_elementwise(torch, op, m, d, rand)), 5)])
        del weights
        for kind, batch, q_len, kv_len in grid["attention"]:
            phase("attention")
            rows["attention.csv"].append([model, kind, batch, q_len, kv_len,
                                          round(timer.op_ms(_attention(torch, kind, batch, q_len, kv_len, d, rand)), 5)])
        layer = _Layer(torch, d, rand)
        for kind, ps, pl, b, c in grid["layer_steps"]:
            phase("layer_steps")
            fn = layer.step(ps, pl, b, c)
            rows["layer_steps.csv"].append([model, 1, kind, ps, pl, b, c, round(timer.graph_ms(fn), 5)])
            del fn
        phase.done()
    for fname, header in HEADERS.items():
        with (out / fname).open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows[fname])
    log("device ceilings: copy bandwidth, matmul rate, host copies")
    device_info = _device(torch, device, dtype, rand, timer)
    (out / "device.json").write_text(json.dumps(device_info, indent=1) + "\n")
    gpu_name = name or ("cpu" if cpu else device_info["name"].lower().replace("nvidia ", "").replace(" ", "-"))
    fp8_rows = [r[7] for r in rows["gemm.csv"] if r[5] == "fp8_e4m3"]
    entry = _catalog_entry(device_info, max(fp8_rows) if fp8_rows else None)
    if tiny:          # no cost model knows the tiny shape: a roofline target of the measured ceilings
        entry.pop("calibration")
        entry["source"] = "simkv calibrate --shapes tiny: measured ceilings only (the tables are of a tiny shape)"
    (out / "gpu.yaml").write_text(yaml.safe_dump({"gpus": {gpu_name: entry}}, sort_keys=False))
    (out / "README.md").write_text(_readme(device_info, models, quick, cpu, dtype_name, tiny))
    log(f"done in {time.perf_counter() - started:.0f} s")
    return out


class _Phases:
    """Progress of one model's measurements: a line when a table starts (with its row count)
    and every ~10 s within one, so a slow device is never minutes of silence."""

    def __init__(self, log: Callable[[str], None], model: str, grid: dict, started: float) -> None:
        self.log, self.model, self.started = log, model, started
        self.total = {k: len(v) for k, v in grid.items()}
        self.current, self.done_rows, self.last = None, 0, time.perf_counter()

    def __call__(self, table: str) -> None:
        now = time.perf_counter()
        if table != self.current:
            self.current, self.done_rows, self.last = table, 0, now
            self.log(f"{self.model}: {table} ({self.total[table]} shapes) at {now - self.started:.0f} s")
        elif now - self.last > 10:
            self.last = now
            self.log(f"{self.model}: {table} {self.done_rows}/{self.total[table]} at {now - self.started:.0f} s")
        self.done_rows += 1

    def done(self) -> None:
        self.log(f"{self.model}: {sum(self.total.values())} shapes measured after {time.perf_counter() - self.started:.0f} s")


def _fp8_matmul(torch, x, w):
    """x @ w in fp8 (e4m3) with per-tensor scales, as the reference measured it: torch._scaled_mm
    with m rounded up to a multiple of 16 and the weight column-major."""
    m = -(-x.shape[0] // 16) * 16
    xq = torch.nn.functional.pad(x, (0, 0, 0, m - x.shape[0])).to(torch.float8_e4m3fn)
    wq = w.t().contiguous().to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=x.device, dtype=torch.float32)
    return lambda: torch._scaled_mm(xq, wq, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)


def _elementwise(torch, op: str, m: int, d, rand):
    import torch.nn.functional as F
    if op == "rmsnorm":
        x, w = rand(m, d.hidden), rand(d.hidden)
        return lambda: F.rms_norm(x, (d.hidden,), w)
    if op == "residual_add":
        x, y = rand(m, d.hidden), rand(m, d.hidden)
        return lambda: x + y
    if op == "silu_mul":
        gate, up = rand(m, d.intermediate), rand(m, d.intermediate)
        return lambda: F.silu(gate) * up
    q, k = rand(m, d.heads, d.head_dim), rand(m, d.kv_heads, d.head_dim)
    cos, sin = rand(m, 1, d.head_dim), rand(m, 1, d.head_dim)
    return lambda: (_rotate(torch, q, cos, sin), _rotate(torch, k, cos, sin))


def _rotate(torch, x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def _attention(torch, kind: str, batch: int, q_len: int, kv_len: int, d, rand):
    import torch.nn.functional as F
    q = rand(batch, d.heads, q_len, d.head_dim)
    k, v = rand(batch, d.kv_heads, kv_len, d.head_dim), rand(batch, d.kv_heads, kv_len, d.head_dim)
    causal = kind == "prefill"
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=d.heads != d.kv_heads)


class _Layer:
    """One decoder layer of the reference engine with random weights."""

    def __init__(self, torch, d, rand) -> None:
        self.torch, self.d, self.rand = torch, d, rand
        q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
        s = 1 / math.sqrt(d.hidden)
        self.w = {"ln1": rand(d.hidden), "qkv": rand(d.hidden, q + 2 * kv) * s, "o": rand(q, d.hidden) * s,
                  "ln2": rand(d.hidden), "gate_up": rand(d.hidden, 2 * d.intermediate) * s,
                  "down": rand(d.intermediate, d.hidden) / math.sqrt(d.intermediate)}

    def step(self, prefill_seqs: int, prefill_len: int, decode_batch: int, decode_ctx: int):
        """A closure running one layer step on static buffers (so it can be graph-captured)."""
        import torch.nn.functional as F
        torch, d, w, rand = self.torch, self.d, self.w, self.rand
        tokens = prefill_seqs * prefill_len + decode_batch
        x = rand(tokens, d.hidden)
        cos, sin = rand(tokens, 1, d.head_dim), rand(tokens, 1, d.head_dim)
        k_cache = rand(decode_batch, d.kv_heads, decode_ctx, d.head_dim) if decode_batch else None
        v_cache = rand(decode_batch, d.kv_heads, decode_ctx, d.head_dim) if decode_batch else None
        gqa = d.heads != d.kv_heads
        nq, nkv = d.heads * d.head_dim, d.kv_heads * d.head_dim
        p_tokens = prefill_seqs * prefill_len

        def run():
            h = F.rms_norm(x, (d.hidden,), w["ln1"])
            qkv = h @ w["qkv"]
            q = _rotate(torch, qkv[:, :nq].view(tokens, d.heads, d.head_dim), cos, sin)
            k = _rotate(torch, qkv[:, nq:nq + nkv].view(tokens, d.kv_heads, d.head_dim), cos, sin)
            v = qkv[:, nq + nkv:].view(tokens, d.kv_heads, d.head_dim)
            parts = []
            if prefill_seqs:
                qp = q[:p_tokens].view(prefill_seqs, prefill_len, d.heads, d.head_dim).transpose(1, 2)
                kp = k[:p_tokens].view(prefill_seqs, prefill_len, d.kv_heads, d.head_dim).transpose(1, 2)
                vp = v[:p_tokens].view(prefill_seqs, prefill_len, d.kv_heads, d.head_dim).transpose(1, 2)
                o = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=gqa)
                parts.append(o.transpose(1, 2).reshape(p_tokens, nq))
            if decode_batch:
                k_cache[:, :, decode_ctx - 1] = k[p_tokens:]          # the step writes the new key/value
                v_cache[:, :, decode_ctx - 1] = v[p_tokens:]
                qd = q[p_tokens:].view(decode_batch, d.heads, 1, d.head_dim)
                o = F.scaled_dot_product_attention(qd, k_cache, v_cache, enable_gqa=gqa)
                parts.append(o.reshape(decode_batch, nq))
            attn = torch.cat(parts) if len(parts) > 1 else parts[0]
            y = x + attn @ w["o"]
            h = F.rms_norm(y, (d.hidden,), w["ln2"])
            gate, up = (h @ w["gate_up"]).chunk(2, dim=-1)
            return y + (F.silu(gate) * up) @ w["down"]
        return run


def _device(torch, device: str, dtype, rand, timer: Timer) -> dict:
    cpu = device == "cpu"
    n = (64 if cpu else 1024) * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = timer.op_ms(lambda: dst.copy_(src))
    size = 1024 if cpu else 8192
    a, b = rand(size, size), rand(size, size)
    mm_ms = timer.op_ms(lambda: a @ b)
    info = {"torch": torch.__version__, "dry_run": False}
    if cpu:
        info.update(name=f"CPU {platform.processor() or platform.machine()}", sm_count=0,
                    total_mem_gib=round(_host_memory_gib(), 3), nvidia_smi="")
        h2d = d2h = 2 * n / (copy_ms * 1e-3) / 1e9 / 2
    else:
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, sm_count=props.multi_processor_count, total_mem_gib=props.total_memory / 2**30,
                    nvidia_smi=_nvidia_smi())
        host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        h2d = n / (timer.op_ms(lambda: src.copy_(host, non_blocking=True)) * 1e-3) / 1e9
        d2h = n / (timer.op_ms(lambda: host.copy_(src, non_blocking=True)) * 1e-3) / 1e9
    info.update({"d2d_copy_GBps_read_plus_write": 2 * n / (copy_ms * 1e-3) / 1e9,
                 "bf16_matmul_8192_TFLOPs": 2 * size ** 3 / (mm_ms * 1e-3) / 1e12,
                 "h2d_pinned_GBps": h2d, "d2h_pinned_GBps": d2h})
    if cpu:
        info["note"] = (f"CPU run: {str(dtype).replace('torch.', '')} matmul of 1024^3 (not bf16 8192^3), copy of 64 MiB;"
                        " host copies stand in for PCIe rates")
    return info


def _host_memory_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            return int(fh.readline().split()[1]) / 2**20
    except OSError:
        return 0.0


def _nvidia_smi() -> str:
    import subprocess
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.current.sm,clocks.max.sm,"
                               "clocks.current.memory,power.limit", "--format=csv"], capture_output=True, text=True,
                              timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _catalog_entry(dev: dict, fp8_tflops: float | None = None) -> dict:
    """A GPU catalog entry from the measurements: measured ceilings stand in for datasheet values
    (fp8: the fastest measured fp8 GEMM, when the card ran them)."""
    entry = {"description": f"{dev['name']} (measured by simkv calibrate)",
             "memory_gib": round(max(dev["total_mem_gib"], 1e-3), 3),
             "hbm_bandwidth_gbps": round(dev["d2d_copy_GBps_read_plus_write"], 1),
             "bf16_tflops": round(dev["bf16_matmul_8192_TFLOPs"], 3),
             "host_link_gbps": round(dev["h2d_pinned_GBps"], 2),
             "measured": {"copy_gbps": round(dev["d2d_copy_GBps_read_plus_write"], 1),
                          "bf16_matmul_tflops": round(dev["bf16_matmul_8192_TFLOPs"], 3),
                          "h2d_gbps": round(dev["h2d_pinned_GBps"], 2), "d2h_gbps": round(dev["d2h_pinned_GBps"], 2)},
             "calibration": ".",
             "source": "simkv calibrate: measured ceilings (no datasheet values); operator and step tables in this folder"}
    if fp8_tflops:
        entry["fp8_tflops"] = round(fp8_tflops, 2)
    return entry


def _readme(dev: dict, models: list[str], quick: bool, cpu: bool, dtype: str = "bfloat16", tiny: bool = False) -> str:
    how = (f"CPU run on a small grid, {dtype}, wall-clock medians." if cpu else
           f"{dtype}, random weights and inputs; operators: median, L2 flushed between repeats; layer steps: CUDA-graph replays, median of 20.")
    if tiny:
        how += (f" The shape is a tiny Llama-style layer ({TINY_SHAPE.hidden} hidden, {TINY_SHAPE.heads} heads): a check of"
                " the machinery. gpu.yaml gives the measured ceilings only (a roofline target); measure real shapes"
                " with `--shapes real`.")
    return (f"# Calibration measurements: {dev['name']}\n\nMeasured by `simkv calibrate` with PyTorch {dev['torch']}"
            f" on {time.strftime('%Y-%m-%d')}: models {', '.join(models)}{' (quick grid: every third shape)' if quick else ''}."
            f" {how}"
            " Same formats as simkv/cost/data/ (see its README). Use it in a scenario with"
            " `catalog_files: [path/to/this/gpu.yaml]` and `hardware: {gpu: <name in gpu.yaml>}`.\n")


def compare_tables(measured: Path, reference: str = "h100") -> dict[str, dict]:
    """Per table: rows on shapes both have, and the median / p90 of |measured / reference − 1|."""
    ref = load_tables(reference)
    from simkv.files.calibration import load_tables_from
    new = load_tables_from(measured)
    keys = {"gemm": ("model", "op", "m", "k", "n", "dtype"), "elementwise": ("model", "op", "m"),
            "attention": ("model", "kind", "batch", "q_len", "kv_len"),
            "layer_steps": ("model", "kind", "prefill_seqs", "prefill_len", "decode_batch", "decode_ctx")}
    out = {}
    for table, cols in keys.items():
        a, b = getattr(new, table), getattr(ref, table)
        index = {tuple(str(b[c][i]) for c in cols): float(b["s"][i]) for i in range(len(b["s"]))}
        ratios = [float(a["s"][i]) / index[key] - 1 for i in range(len(a["s"]))
                  if (key := tuple(str(a[c][i]) for c in cols)) in index]
        err = np.abs(np.array(ratios))
        out[table] = {"rows": len(ratios), "median_abs": float(np.median(err)) if len(err) else None,
                      "p90_abs": float(np.percentile(err, 90)) if len(err) else None,
                      "median_signed": float(np.median(ratios)) if len(err) else None}
    return out
