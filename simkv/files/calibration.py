"""Reading the GPU calibration measurements shipped in `simkv/cost/data/<gpu>/` (an I/O edge:
the cost models take the parsed columns and never read files themselves).

The CSVs are copied unchanged from the team's calibration runs; `simkv/cost/data/README.md`
says how they were measured. Every time is converted from milliseconds to seconds here.
"""

from __future__ import annotations

import csv
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from simkv.catalog import builtin_models
from simkv.cost.layer import CALIBRATION_MODELS
from simkv.cost.tables import CalibrationTables
from simkv.specs import ShardDims

_TEXT_COLUMNS = {"model", "op", "kind", "dtype"}


def calibration_shapes() -> dict[str, ShardDims]:
    """The calibration runs' model names -> their shard dims (from the built-in catalog)."""
    models = builtin_models()
    return {name: models[m].shard(tp) for name, (m, tp) in CALIBRATION_MODELS.items()}


def available_gpus() -> list[str]:
    """GPUs with measurement folders."""
    root = resources.files("simkv.cost").joinpath("data")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.joinpath("layer_steps.csv").is_file())


def _columns(text: str) -> dict:
    rows = list(csv.reader(text.splitlines()))
    header, body = rows[0], [r for r in rows[1:] if r]
    out = {}
    for i, name in enumerate(header):
        values = [r[i] for r in body]
        if name in _TEXT_COLUMNS:
            out[name] = np.array(values)
        else:
            out[name] = np.array([float(v) for v in values])
    if "ms" in out:
        out["s"] = out.pop("ms") / 1e3
    return out


_FILES = ("device.json", "gemm.csv", "elementwise.csv", "attention.csv", "layer_steps.csv")


def _read_tables(name: str, folder) -> CalibrationTables:
    """The five files of a measurement folder (a package resource or a Path: anything with
    joinpath and read_text), and `model_steps.csv` (whole-model steps) where there is one."""
    read = lambda file: _columns(folder.joinpath(file).read_text(encoding="utf-8"))
    whole = read("model_steps.csv") if folder.joinpath("model_steps.csv").is_file() else None
    return CalibrationTables(name, json.loads(folder.joinpath("device.json").read_text(encoding="utf-8")),
                             read("gemm.csv"), read("elementwise.csv"), read("attention.csv"), read("layer_steps.csv"),
                             whole, calibration_shapes())


@lru_cache(maxsize=None)
def load_tables(gpu: str) -> CalibrationTables:
    """The measurements of `gpu` (e.g. 'h100'). Raises KeyError if none are shipped."""
    root = resources.files("simkv.cost").joinpath("data", gpu)
    if not root.joinpath("layer_steps.csv").is_file():
        raise KeyError(f"no calibration measurements for '{gpu}' (have: {', '.join(available_gpus())})")
    return _read_tables(gpu, root)


@lru_cache(maxsize=None)
def load_tables_from(folder: str | Path) -> CalibrationTables:
    """The measurements in a folder written by `simkv calibrate` (the same files)."""
    folder = Path(folder)
    missing = [n for n in _FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: no {', '.join(missing)} (write the folder with `simkv calibrate`)")
    return _read_tables(folder.name, folder)


@lru_cache(maxsize=None)
def calibration_from(folder: str):
    """The fitted Calibration of a `simkv calibrate` folder."""
    from simkv.cost.calibrated import Calibration
    return Calibration.fit(load_tables_from(folder))


@lru_cache(maxsize=None)
def calibration_for(gpu: str):
    """The fitted Calibration of `gpu`, or None when no measurements are shipped for it."""
    from simkv.cost.calibrated import Calibration
    if gpu in VIDUR_A100:
        return vidur_a100_calibration(gpu)
    if gpu not in available_gpus():
        return None
    from dataclasses import replace
    return replace(Calibration.fit(load_tables(gpu)), allreduce=vidur_allreduce_for(gpu))


# ---------------------------------------------------------------- Vidur profiles (MIT; simkv/cost/data/vidur/)
VIDUR_NETWORK = {"h100": "h100_dgx", "h200": "h100_dgx", "a100-80gb": "a100_dgx", "a100-40gb": "a100_dgx"}


def _vidur_text(*parts: str) -> str:
    return resources.files("simkv.cost").joinpath("data", "vidur", *parts).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def load_vidur_collective(topology: str, op: str = "all_reduce") -> dict:
    """Vidur's NCCL profile `network/<topology>/<op>.csv` as columns: num_workers, devices_per_node,
    size (bytes), s (median seconds)."""
    rows = list(csv.DictReader(_vidur_text("network", topology, f"{op}.csv").splitlines()))
    col = lambda name: np.array([float(r[name]) for r in rows])
    return {"num_workers": col("num_workers"), "devices_per_node": col("devices_per_node"), "size": col("size"),
            "s": col(f"time_stats.{op}.median") / 1e3}


@lru_cache(maxsize=None)
def vidur_allreduce_for(gpu: str):
    """The fitted all-reduce model of a catalog GPU's NVSwitch node (None when Vidur has no profile)."""
    from simkv.cost.collectives import CollectiveModel
    topology = VIDUR_NETWORK.get(gpu)
    if topology is None:
        return None
    return CollectiveModel.fit(load_vidur_collective(topology, "all_reduce"), f"{topology} all_reduce",
                               assumed_for=None if gpu.startswith(topology.split("_")[0]) else gpu)


VIDUR_MODELS = ("Meta-Llama-3-8B", "Llama-2-7b-hf", "Meta-Llama-3-70B", "Llama-2-70b-hf")
VIDUR_A100 = {"a100-80gb": (2039.0, 312.0), "a100-40gb": (1555.0, 312.0)}  # datasheet GB/s, TFLOP/s (catalog)


@lru_cache(maxsize=None)
def load_vidur_compute(device: str, model: str) -> dict:
    """Vidur's `compute/<device>/<model>/mlp.csv` as float columns (use_gated_mlp dropped)."""
    rows = list(csv.DictReader(_vidur_text("compute", device, model, "mlp.csv").splitlines()))
    names = [k for k in rows[0] if k and k != "use_gated_mlp"]
    return {k: np.array([float(r[k]) for r in rows]) for k in names}


@lru_cache(maxsize=None)
def vidur_a100_calibration(gpu: str):
    """An A100 Calibration from Vidur's A100 profiles and the H100 measurements (simkv.cost.vidur_a100)."""
    from simkv.cost.vidur_a100 import a100_calibration
    hbm, tflops = VIDUR_A100[gpu]
    profiles = {m: load_vidur_compute("a100", m) for m in VIDUR_MODELS}
    return a100_calibration(gpu, hbm, tflops, profiles, load_tables("h100"), calibration_for("h100"),
                            vidur_allreduce_for(gpu))


@lru_cache(maxsize=None)
def load_moe_gemm(gpu: str) -> dict | None:
    """The grouped expert GEMMs measured on `gpu` (`moe_gemm.csv`: model, op, tokens,
    experts_total, top_k, active_experts, tokens_per_expert, k, n, s), or None when not shipped."""
    root = resources.files("simkv.cost").joinpath("data", gpu)
    if not root.joinpath("moe_gemm.csv").is_file():
        return None
    return _columns(root.joinpath("moe_gemm.csv").read_text(encoding="utf-8"))


def load_moe_gemm_from(folder: str | Path) -> dict | None:
    """`moe_gemm.csv` of a `simkv calibrate` folder, or None when it has none."""
    path = Path(folder) / "moe_gemm.csv"
    return _columns(path.read_text(encoding="utf-8")) if path.is_file() else None


@lru_cache(maxsize=None)
def moe_table_for(gpu: str, folder: str | None = None):
    """The MoeGemmTable of a shipped GPU (or of a `simkv calibrate` folder), None without measurements."""
    from simkv.cost.moe import MoeGemmTable
    cols = load_moe_gemm_from(folder) if folder else load_moe_gemm(gpu)
    if cols is None:
        return None
    dev = load_tables_from(folder).device if folder else load_tables(gpu).device
    rate = dev["bf16_matmul_8192_TFLOPs"] * 1e12
    return MoeGemmTable(cols, {"bfloat16": rate, "fp8_e4m3": 2 * rate, "int4_w4a16": rate},
                        dev["d2d_copy_GBps_read_plus_write"] * 1e9)
