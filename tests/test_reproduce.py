"""`simkv reproduce`: the manifest covers every figure docs/ shows, the generated scenario
reference is current, and regenerating a figure gives the same bytes twice."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
from simkv.report.reference import scenario_reference
from simkv.studies.reproduce import MANIFEST

DOCS = ROOT / "docs"


def _targets() -> set[str]:
    return {t for job in MANIFEST for t in job.targets()}


def test_every_docs_image_comes_from_the_manifest():
    targets = _targets()
    linked = set()
    for page in DOCS.rglob("*.md"):
        for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            linked.add((page.parent / link).resolve().relative_to(DOCS.resolve()).as_posix())
    assert linked and linked <= targets, sorted(linked - targets)
    on_disk = {p.relative_to(DOCS).as_posix() for p in (DOCS / "figures").rglob("*") if p.is_file()}
    svg_twins = {t.replace(".png", ".svg") for t in targets if t.startswith("figures/cost-model/")}
    assert on_disk <= targets | svg_twins, f"stale files in docs/figures: {sorted(on_disk - targets - svg_twins)}"
    assert {t for t in targets if t.startswith("figures/")} <= on_disk


def test_scenario_reference_is_current_and_complete():
    text = scenario_reference()
    assert (DOCS / "scenario-reference.md").read_text() == text, "run `simkv reproduce --only scenario-reference`"
    for needle in ("`max_num_batched_tokens`", "workload.arrival (process: gamma)", "`beam_reselect`", "`tensor_parallel`",
                   "`warmup_s`", "gpus.NAME"):
        assert needle in text


def test_reproduce_is_deterministic(tmp_path):
    """A fresh process writes the quickstart figures byte for byte as the committed docs/ ones,
    which another process wrote on another day (so also what `reproduce --check` compares)."""
    proc = subprocess.run([sys.executable, "-m", "simkv.cli", "reproduce", "--only", "quickstart", "-o",
                           str(tmp_path / "a")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 4
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (ROOT / "docs" / f).read_bytes(), f
    proc = run_cli("reproduce", "--only", "nothing")
    assert proc.returncode == 2 and "quickstart" in proc.stderr


def test_reproduce_check_compares_with_the_docs(tmp_path):
    proc = run_cli("reproduce", "--check", "--only", "scenario-reference")
    assert proc.returncode == 0 and "1 of 1 file(s) identical" in proc.stdout, proc.stdout + proc.stderr
    (tmp_path / "scenario-reference.md").write_text("stale\n")
    proc = run_cli("reproduce", "--check", "--only", "scenario-reference", "-o", str(tmp_path))
    assert proc.returncode == 1 and "differs" in proc.stdout


@pytest.mark.parametrize("job", ["cost-model"])
def test_committed_docs_are_what_the_code_regenerates(job):
    """A fast slice of `simkv reproduce --check`: the cost-model page is byte for byte what the
    code gives now (the whole check takes minutes; the quickstart figures are compared above)."""
    proc = run_cli("reproduce", "--check", "--only", job)
    assert proc.returncode == 0 and "identical to docs/" in proc.stdout, proc.stdout + proc.stderr


def _avx512_features() -> list[str]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        return []
    return [f for f in ("X86_V4", "AVX512_ICL", "AVX512_SPR", "AVX512F", "AVX512_SKX", "AVX512_CLX", "AVX512_CNL")
            if features.get(f)]


def test_log_axis_figures_have_the_same_bytes_on_cpus_without_avx512(tmp_path):
    """numpy's log10 differs in the last bit between its AVX-512 and AVX2 paths: the latency CDFs
    (log axes) of docs/ came out with other bytes on an AVX2-only machine. Emulated here by
    switching numpy's AVX-512 code off (NPY_DISABLE_CPU_FEATURES)."""
    import os
    import shutil

    import pytest
    disable = _avx512_features()
    if not disable:
        pytest.skip("this CPU has no AVX-512: numpy takes the AVX2 path anyway")
    run = run_cli("run", "scenarios/quickstart.yaml", "-q", "--no-figures", "-o", str(tmp_path / "native"))   # plot draws them
    assert run.returncode == 0, run.stderr
    shutil.copytree(tmp_path / "native", tmp_path / "avx2")
    for name, env in (("native", {}), ("avx2", {"NPY_DISABLE_CPU_FEATURES": " ".join(disable)})):
        # two fresh processes, the same but for numpy's CPU features (matplotlib's state included)
        proc = subprocess.run([sys.executable, "-m", "simkv.cli", "plot", str(tmp_path / name)], capture_output=True,
                              text=True, cwd=ROOT, env={**os.environ, **env})    # both drawn from the same files
        assert proc.returncode == 0, proc.stderr
    for name in ("latency_cdf.png", "latency_cdf.svg", "kv_utilization.png"):
        assert (tmp_path / "native" / name).read_bytes() == (tmp_path / "avx2" / name).read_bytes(), name


def _quickstart_results(*sets: str):
    import simkv
    scenario = simkv.load_scenario(ROOT / "scenarios" / "quickstart.yaml", ["run.num_requests=400", "run.warmup_s=2", *sets])
    return {"base": simkv.simulate(scenario)}


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_figures_tick_labels_never_overlap_and_legends_stay_off_the_data():
    import matplotlib.pyplot as plt

    from simkv.report.plots import FIGURES
    results = _quickstart_results()
    for name, make in FIGURES.items():
        fig = make(results)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                boxes = [t.get_window_extent(renderer) for t in axis.get_ticklabels(which="both")
                         if t.get_visible() and t.get_text()]
                for i, a in enumerate(boxes):
                    assert not any(_overlap(a, b) for b in boxes[i + 1:]), (name, [t.get_text() for t in axis.get_ticklabels(which="both")])
            assert ax.get_legend() is None, name                        # no legend inside an axes
        for legend in fig.legends:
            box = legend.get_window_extent(renderer)
            assert not any(_overlap(box, ax.get_window_extent(renderer)) for ax in fig.axes), name
        plt.close(fig)


def test_titles_come_from_the_setup_not_from_the_description():
    """quickstart's description says "one H100": simulated on an H200, every title says H200,
    and a sweep's title (from scenario_title) too; presets are named."""
    import matplotlib.pyplot as plt

    import simkv
    from simkv.files.results import scenario_title
    from simkv.report.plots import FIGURES
    results = _quickstart_results("hardware.gpu=h200")
    for name, make in FIGURES.items():
        fig = make(results)
        title = fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
        assert "H200" in title and "H100" not in title and "engine preset simkv" in title, (name, title)
        plt.close(fig)
    scenario = simkv.load_scenario(ROOT / "scenarios" / "vllm-vs-tgi-h100.yaml", ["hardware.gpu=h200", "run.duration_s=5",
                                                                                  "run.warmup_s=0"])
    assert "H100" in scenario.description
    from simkv.simulate import simulate_sweep
    points = simulate_sweep(scenario)[:1]
    title = scenario_title(scenario, points)
    assert "H200" in title and "H100" not in title and "vllm-v1 / tgi" in title, title
