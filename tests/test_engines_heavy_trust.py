"""scenarios/engines-2026-h100-heavy.yaml (docs/engines-2026.md, heavy load): it loads, sweeps the arrival
rate into saturation over the light-load scenario's stream, and compares the engines the page reports."""

from __future__ import annotations

from conftest import ROOT
from simkv.files.scenario_file import load_scenario


def test_heavy_scenario_is_the_light_stream_swept_into_saturation():
    heavy = load_scenario(ROOT / "scenarios" / "engines-2026-h100-heavy.yaml")
    light = load_scenario(ROOT / "scenarios" / "engines-2026-h100.yaml")
    assert heavy.sweep.field == "workload.arrival.rate" and list(heavy.sweep.values) == [12, 24, 36]
    assert heavy.workload.model_dump(exclude={"arrival"}) == light.workload.model_dump(exclude={"arrival"})
    assert heavy.run == light.run and heavy.model == light.model
    assert {v.name for v in heavy.variants} == {"vllm-v1", "sglang", "trtllm", "trtllm-max-util"}
    page = (ROOT / "docs" / "engines-2026.md").read_text()
    assert "engines-2026-h100-heavy.yaml" in page and "| 36 | trtllm |" in page
