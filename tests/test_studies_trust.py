"""Trust checks of the study tools: sweeps run the engine the scenario names (every preset, local
and Ray), capacity answers that say how far they hold, bounded searches, and CLI numbers checked."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import simkv
from simkv.errors import SimkvError
from simkv.presets import PRESETS

from conftest import ROOT

TINY = """\
name: tiny
model: llama3-8b
hardware: {gpu: h100}
engine: {max_model_len: 2048}
workload:
  arrival: {process: poisson, rate: 20}
  prompt_tokens: {dist: uniform, low: 20, high: 600}
  output_tokens: {dist: uniform, low: 5, high: 200}
run: {seed: 1, num_requests: 40}
variants:
  - {name: plain, set: {}}
  - {name: narrow, set: {engine.max_num_seqs: 8}}
"""


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simkv.cli", *args], capture_output=True, text=True, cwd=cwd)


def _tiny(tmp_path: Path, text: str = TINY) -> Path:
    (tmp_path / "tiny.yaml").write_text(text)
    return tmp_path / "tiny.yaml"


def _json(obj):
    return json.loads(json.dumps(obj))


# ---------------------------------------------------------------- 1. sweeps honour engine presets


def _check_points_match_simulate(tmp_path: Path, rows: list[dict], out: Path, sets: dict):
    assert rows and all(r["error"] is None for r in rows), [r["error"] for r in rows]
    seen = set()
    for r in rows:
        point = {k: v for k, v in r.items() if "." in k}
        sc = simkv.load_scenario(tmp_path / "tiny.yaml", {**sets, **point})
        expected = simkv.simulate(sc, r["variant"]).summary
        on_disk = json.loads((out / "points" / r["key"] / "summary.json").read_text())
        assert on_disk == _json(expected), (r["engine.preset"], r["variant"])
        assert on_disk["setup"]["preset"] == r["engine.preset"]
        assert on_disk["setup"]["scheduler"] == PRESETS[r["engine.preset"]]["defaults"].get("scheduler", "fcfs")
        seen.add((r["engine.preset"], r["variant"]))
    return seen


def test_sweep_points_run_every_preset_exactly_as_simulate(tmp_path):
    _tiny(tmp_path)
    (tmp_path / "s.yaml").write_text("base: tiny.yaml\nset: {run.seed: 2}\n"
                                     f"grid: {{engine.preset: [{', '.join(PRESETS)}]}}\n")
    from simkv.sweep import run_sweep_file
    rows, _ = run_sweep_file(tmp_path / "s.yaml", tmp_path / "out", workers=2)
    seen = _check_points_match_simulate(tmp_path, rows, tmp_path / "out", {"run.seed": 2})
    assert seen == {(p, v) for p in PRESETS for v in ("plain", "narrow")}


def test_point_key_tells_an_unset_field_from_its_default(tmp_path):
    """preset tgi with scheduler unset runs the tgi scheduler; with scheduler: fcfs set it runs FCFS:
    the two dump identically, so the cache key must hash the engine the preset resolves to."""
    from simkv.sweep import point_key
    text = TINY.replace("engine: {max_model_len: 2048}", "engine: {max_model_len: 2048, preset: tgi}")
    unset = simkv.load_scenario(_tiny(tmp_path, text))
    fcfs = simkv.load_scenario(tmp_path / "tiny.yaml", {"engine.scheduler": "fcfs"})
    assert unset.model_dump() == fcfs.model_dump()
    assert point_key(unset, "plain") != point_key(fcfs, "plain")
    assert point_key(unset, "plain") == point_key(simkv.load_scenario(tmp_path / "tiny.yaml"), "plain")


def test_scenarios_sent_to_workers_keep_their_presets(tmp_path):
    """What a worker rebuilds from the message is the scenario, unset fields included."""
    from simkv.scenario import Scenario
    from simkv.sweep import scenario_message
    for preset in PRESETS:
        sc = simkv.load_scenario(_tiny(tmp_path), {"engine.preset": preset})
        back = Scenario.model_validate_json(scenario_message(sc))
        assert back == sc and back.engine.model_fields_set == sc.engine.model_fields_set
