"""`simkv reproduce`: the manifest covers every figure docs/ shows, the generated scenario
reference is current, and regenerating a figure gives the same bytes twice."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT
from simkv.reference import scenario_reference
from simkv.reproduce import MANIFEST

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
    for out in ("a", "b"):
        proc = subprocess.run([sys.executable, "-m", "simkv.cli", "reproduce", "--only", "quickstart", "-o",
                               str(tmp_path / out)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 4
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    proc = subprocess.run([sys.executable, "-m", "simkv.cli", "reproduce", "--only", "nothing"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and "quickstart" in proc.stderr


def test_reproduce_check_compares_with_the_docs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "simkv.cli", "reproduce", "--check", "--only", "scenario-reference"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "1 of 1 file(s) identical" in proc.stdout, proc.stdout + proc.stderr
    (tmp_path / "scenario-reference.md").write_text("stale\n")
    proc = subprocess.run([sys.executable, "-m", "simkv.cli", "reproduce", "--check", "--only", "scenario-reference",
                           "-o", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "differs" in proc.stdout
