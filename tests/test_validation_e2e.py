"""docs/validation-e2e.md against its scenarios: every scenario under scenarios/validation-e2e/ loads
and is in the page's table with the quoted measurement, and one point's simulated numbers,
recomputed here, are the ones the page states."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT
from simkv.studies.e2e_validation import END, POINTS, PRIMARY, OTHER, SCENARIO_DIR, SOURCES, START, relative_error, write_page
from simkv.files.scenario_file import load_scenario

PAGE = ROOT / "docs" / "validation-e2e.md"


def _generated() -> str:
    text = PAGE.read_text()
    assert START in text and END in text, "run `simkv reproduce --only validation-e2e`"
    return text.split(START, 1)[1].split(END, 1)[0]


def _rows() -> dict[tuple[str, str], list[str]]:
    """(scenario, bench metric) -> the table row's cells."""
    rows = {}
    for line in _generated().splitlines():
        m = re.match(r"\| `([^`]+)` \|.*`bench\.([a-z0-9_]+)`", line)
        if m:
            rows[(m.group(1), m.group(2))] = [c.strip() for c in line.strip().strip("|").split("|")]
    return rows


def test_every_scenario_loads_and_is_in_the_table():
    files = sorted((ROOT / SCENARIO_DIR).glob("*.yaml"))
    assert len(files) >= 5
    names = {f.stem for f in files}
    assert names == {p.scenario for p in POINTS}, "every scenario has a point and every point a scenario"
    for f in files:
        scenario = load_scenario(f)
        assert scenario.name == f.stem
        assert {v.name for v in scenario.variants} == {PRIMARY, OTHER}
    rows = _rows()
    assert {s for s, _ in rows} == names
    assert len(rows) == len(POINTS) >= 5 and len({p.source for p in POINTS}) >= 2
    for p in POINTS:
        cells = rows[(p.scenario, p.metric)]
        assert cells[3] == f"{p.measured} {p.unit}", "the page quotes the measured number as POINTS does"
        assert p.measured in PAGE.read_text().split(START)[0], f"{p.measured} is not in the sources section"
        assert SOURCES[p.source].url in cells[1]
        # the error column is (simulated - measured) / measured of the stated numbers
        sim = float(cells[4].replace(",", ""))
        assert cells[5] == f"{relative_error(sim, p.value):+.1%}"


def test_one_point_recomputed_matches_the_page():
    """The single-user NIM point (20 requests, about 3 s): TTFT, TPOT and throughput of both
    variants, seeds fixed, to 1e-6 relative of what the page states."""
    from simkv.studies.e2e_validation import simulate_scenario
    name = "nim-70b-fp8-2xh100-5000-500-c1"
    bench = simulate_scenario(ROOT, name)
    rows = _rows()
    checked = 0
    for p in (p for p in POINTS if p.scenario == name):
        cells = rows[(name, p.metric)]
        for variant, col in ((PRIMARY, 4), (OTHER, 6)):
            stated = float(cells[col].replace(",", ""))
            assert bench[variant][p.metric] == pytest.approx(stated, rel=1e-6), (p.metric, variant)
            checked += 1
    assert checked == 6
    # independent check of the single-user numbers: one request in flight, so throughput is
    # output tokens over (TTFT + 499 TPOTs) of that request
    b = bench[PRIMARY]
    e2e_s = (b["mean_ttft_ms"] + 499 * b["mean_tpot_ms"]) / 1000
    assert b["output_throughput"] == pytest.approx(500 / e2e_s, rel=1e-3)


def test_write_page_keeps_the_hand_written_text(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\nintro\n\n{START}\nstale\n{END}\n\nafter\n")
    p = POINTS[0]
    rows = [{"point": p, "simulated": p.value * 0.9, "simulated_other": p.value * 1.1,
             "error": -0.1, "error_other": 0.1}]
    write_page(ROOT, page, tmp_path / "figures", rows=rows)
    text = page.read_text()
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert "stale" not in text and "-10.0%" in text and "+10.0%" in text
    assert (tmp_path / "figures" / "measured-vs-simulated.png").exists()
    assert "](figures/measured-vs-simulated.png)" in text


def test_vllm_latency_point_recomputed_matches_the_page():
    """The vLLM nightly latency point (a batch of 8 x 32/128, under a second to simulate): the page's
    simulated latency is recomputed, and independently the batch latency is TTFT + 127 TPOTs, with every
    request of the batch finishing together (median = mean)."""
    from simkv.studies.e2e_validation import simulate_scenario
    name = "vllm-latency-llama8b-tp1-h200-32-128-b8"
    bench = simulate_scenario(ROOT, name)
    cells = _rows()[(name, "mean_e2el_ms")]
    for variant, col in ((PRIMARY, 4), (OTHER, 6)):
        assert bench[variant]["mean_e2el_ms"] == pytest.approx(float(cells[col].replace(",", "")), rel=1e-6)
    b = bench[PRIMARY]
    assert b["mean_e2el_ms"] == pytest.approx(b["mean_ttft_ms"] + 127 * b["mean_tpot_ms"], rel=1e-9)
    assert b["median_e2el_ms"] == pytest.approx(b["mean_e2el_ms"], rel=1e-9)
