"""Every write stays inside the results folder: names from data become plain folder names (two
that would share one are an error), writes are atomic and never follow a symbolic link, and the
-o folder's parent must exist. Ordinary outputs stay byte-identical (see also test_outputs.py)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

import simkv
from simkv.errors import SimkvError
from simkv.files.results import redraw, write_results, write_sweep
from simkv.result import Result

from conftest import ROOT, run_cli, small_scenario

VICTIM_TEXT = "precious data\n"


def _files(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    return victim


def _scenario_file(tmp_path: Path, extra: str = "", name: str | None = None) -> Path:
    text = (ROOT / "scenarios" / "quickstart.yaml").read_text()
    if name is not None:
        text = text.replace("name: quickstart", f"name: {json.dumps(name)}")
    path = tmp_path / "s.yaml"
    path.write_text(text + extra)
    return path


@pytest.fixture(scope="module")
def two_variants() -> dict[str, Result]:
    sc = small_scenario(variants=[{"name": "p", "set": {"engine.allocator": "paged"}},
                                  {"name": "c", "set": {"engine.allocator": "contiguous"}}])
    return simkv.simulate_all(sc)


def _renamed(results: dict[str, Result], *names: str) -> dict[str, Result]:
    return {n: Result(n, r.scenario, r.summary, r.requests, r.timeseries) for n, r in zip(names, results.values())}


# ---------------------------------------------------------------- symbolic links are never followed


def test_symlinked_summary_is_refused_and_victim_untouched(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").symlink_to(victim)
    proc = run_cli("run", "scenarios/quickstart.yaml", "-q", "--no-figures", "-o", str(out),
                "--set", "run.num_requests=50", "--set", "run.warmup_s=0")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"simkv: error: {out / 'summary.json'}: output file: is a symbolic link")
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert victim.read_text() == VICTIM_TEXT
    assert (out / "summary.json").is_symlink()            # the link itself is left alone too


def test_symlinked_figure_and_report_are_refused(tmp_path, two_variants):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    write_results(two_variants, out, figures=False)
    (out / "latency_cdf.svg").symlink_to(victim)
    with pytest.raises(SimkvError, match="symbolic link") as err:
        redraw(out)
    assert err.value.file == str(out / "latency_cdf.svg")
    assert victim.read_text() == VICTIM_TEXT
    (out / "latency_cdf.svg").unlink()
    (out / "report.md").symlink_to(victim)
    with pytest.raises(SimkvError, match="symbolic link"):
        redraw(out)
    assert victim.read_text() == VICTIM_TEXT


def test_symlinked_variant_folder_is_refused(tmp_path, two_variants):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "p").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SimkvError, match="symbolic link") as err:
        write_results(two_variants, out, figures=False)
    assert err.value.file == str(out / "p") and err.value.fix
    assert list(elsewhere.iterdir()) == []


def test_symlinked_output_folder_itself_is_refused(tmp_path, two_variants):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real, target_is_directory=True)
    with pytest.raises(SimkvError, match="symbolic link"):
        write_results(two_variants, tmp_path / "out", figures=False)
    assert list(real.iterdir()) == []


def test_symlinked_sweep_value_and_points_folders_are_refused(tmp_path, two_variants):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "rate_2").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SimkvError, match="symbolic link"):
        write_sweep("workload.arrival.rate", [(2, two_variants), (8, two_variants)], out, "t")
    assert list(elsewhere.iterdir()) == []
    # a sweep's per-point cache, out/points/<key>/, is written the same way (sweep.py saves with root=out)
    (out / "points").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SimkvError, match="symbolic link") as err:
        next(iter(two_variants.values())).save(out / "points" / "0123abcd", root=out)
    assert err.value.file == str(out / "points")
    assert list(elsewhere.iterdir()) == []


def test_hard_linked_table_is_replaced_not_rewritten(tmp_path, two_variants):
    """Writes go to a temporary file that replaces the old one: a hard link to the old file
    (another name of the same bytes) keeps its content."""
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    os.link(victim, out / "requests.csv")
    next(iter(two_variants.values())).save(out)
    assert victim.read_text() == VICTIM_TEXT
    assert (out / "requests.csv").read_text().startswith("req_id,")
    assert not [p for p in out.iterdir() if p.name.startswith(".simkv-")]        # no temporary files left


# ---------------------------------------------------------------- names from data


def test_variant_named_dotdot_never_writes_outside(tmp_path, two_variants):
    out = tmp_path / "out"
    with pytest.raises(SimkvError, match="cannot be a file or folder name") as err:
        write_results(_renamed(two_variants, "..", "p"), out, figures=False)
    assert err.value.field == "variants[0].name"
    assert _files(tmp_path) <= {Path("out")}


def test_variant_named_dotdot_slash_escape_stays_inside(tmp_path, two_variants):
    out = tmp_path / "out"
    write_results(_renamed(two_variants, "../escape", "/abs/path"), out, figures=False)
    assert {p.parts[0] for p in _files(tmp_path)} == {"out"}
    assert (out / ".._escape" / "summary.json").exists() and (out / "_abs_path" / "summary.json").exists()
    assert list(json.loads((out / "summary.json").read_text())) == ["../escape", "/abs/path"]


def test_colliding_variant_names_are_an_error(tmp_path):
    extra = ("variants:\n  - {name: a/b, set: {engine.block_size: 16}}\n"
             "  - {name: a_b, set: {engine.block_size: 32}}\n")
    path = _scenario_file(tmp_path, extra)
    proc = run_cli("run", str(path), "-q", "--no-figures", "-o", str(tmp_path / "out"), "--set", "run.num_requests=50",
                "--set", "run.warmup_s=0")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"simkv: error: {path}: variants[1].name: variants 'a/b' and 'a_b' would both be "
                                  "written to the folder a_b")
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()                  # refused before anything ran


def test_case_only_differences_are_distinct(tmp_path, two_variants):
    out = tmp_path / "out"
    write_results(_renamed(two_variants, "Paged", "paged"), out, figures=False)
    assert (out / "Paged" / "summary.json").exists() and (out / "paged" / "summary.json").exists()


def test_variant_named_like_a_results_file_is_an_error(tmp_path, two_variants):
    with pytest.raises(SimkvError, match="a file of the results folder"):
        write_results(_renamed(two_variants, "summary.json", "p"), tmp_path / "out", figures=False)
    with pytest.raises(SimkvError, match="a file of the results folder"):
        write_results(_renamed(two_variants, "kv_breakdown.png", "p"), tmp_path / "out2")


def test_colliding_sweep_values_are_an_error(tmp_path, two_variants):
    out = tmp_path / "out"
    with pytest.raises(SimkvError, match="sweep values 5 and '5' would both be written to the folder rate_5") as err:
        write_sweep("workload.arrival.rate", [(5, two_variants), ("5", two_variants)], out, "t")
    assert err.value.field == "sweep.values[1]"
    assert not out.exists()


def test_overlong_and_control_character_names(tmp_path, two_variants):
    with pytest.raises(SimkvError, match="the limit is 255"):
        write_results(_renamed(two_variants, "x" * 300, "p"), tmp_path / "out", figures=False)
    with pytest.raises(SimkvError, match="the limit is 255"):
        write_results(_renamed(two_variants, "é" * 128, "p"), tmp_path / "out", figures=False)   # 256 bytes
    write_results(_renamed(two_variants, "x" * 255, "a\x00b\nc"), tmp_path / "ok", figures=False)
    assert {p.name for p in (tmp_path / "ok").iterdir() if p.is_dir()} == {"x" * 255, "a_b_c"}


def test_scenario_name_with_path_separators_for_the_default_folder(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    path = _scenario_file(tmp_path, name="../../escape")
    proc = run_cli("run", str(path), "-q", "--no-figures", "--set", "run.num_requests=50", "--set", "run.warmup_s=0",
                cwd=work)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"simkv: error: {path}: name: '../../escape' is used as a file or folder name")
    assert _files(tmp_path) == {Path("s.yaml"), Path("work")}
    # an ordinary name still gets results/<name>/, results/ created when missing
    path = _scenario_file(tmp_path, name="my run")
    proc = run_cli("run", str(path), "-q", "--no-figures", "--set", "run.num_requests=50", "--set", "run.warmup_s=0",
                cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (work / "results" / "my run" / "summary.json").exists()


def test_sweep_json_names_are_used_only_when_plain(tmp_path, two_variants):
    out = tmp_path / "out"
    write_sweep("workload.arrival.rate", [(2, two_variants), (8, two_variants)], out, "t")
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["figure"] == "sweep" and meta["table"] == "sweep.csv"
    for key, bad in (("figure", "../evil"), ("figure", "/tmp/evil"), ("table", "../../etc/passwd"), ("figure", "..")):
        (out / "sweep.json").write_text(json.dumps({**meta, key: bad}))
        before = _files(tmp_path)
        proc = run_cli("plot", str(out))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"simkv: error: {out / 'sweep.json'}: {key}: ") and "Traceback" not in proc.stderr
        assert _files(tmp_path) == before and not (tmp_path / "evil.png").exists()


# ---------------------------------------------------------------- the -o folder


def test_output_folder_parent_must_exist(tmp_path):
    out = tmp_path / "missing" / "out"
    proc = run_cli("run", "scenarios/quickstart.yaml", "-q", "--no-figures", "-o", str(out), "--set", "run.num_requests=50",
                "--set", "run.warmup_s=0")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"simkv: error: {out}: output folder: the folder it would be created in, "
                                  f"{out.parent}, does not exist")
    assert "fix:" in proc.stderr and not (tmp_path / "missing").exists()


def test_output_folder_that_is_a_file_is_an_error(tmp_path, two_variants):
    (tmp_path / "out").write_text("x")
    with pytest.raises(SimkvError, match="is a file, not a folder"):
        write_results(two_variants, tmp_path / "out", figures=False)


# ---------------------------------------------------------------- contents, checked independently


def test_saved_files_are_exactly_the_serialised_data(tmp_path, two_variants):
    out = tmp_path / "out"
    write_results(two_variants, out, figures=False)
    assert (out / "summary.json").read_bytes() == (
        json.dumps({n: r.summary for n, r in two_variants.items()}, indent=2) + "\n").encode()
    for name, res in two_variants.items():
        assert (out / name / "summary.json").read_bytes() == (json.dumps(res.summary, indent=2) + "\n").encode()
        rows = list(csv.reader((out / name / "requests.csv").open(newline="")))
        assert rows[0] == list(res.requests) and len(rows) == 1 + len(res.requests["req_id"])
        assert [int(r[0]) for r in rows[1:]] == [int(v) for v in res.requests["req_id"]]
        assert (out / name / "scenario.json").read_text() == res.scenario.model_dump_json(indent=2, exclude_unset=True) + "\n"
    table = list(csv.DictReader((out / "comparison.csv").open(newline="")))
    assert [r["variant"] for r in table] == list(two_variants)
    assert [int(r["completed"]) for r in table] == [r.summary["requests"]["completed"] for r in two_variants.values()]
    assert not [p for p in out.rglob(".simkv-*")]


def test_safe_paths_units(tmp_path):
    from simkv.files.safe_paths import folder_name, plain_name, write_file
    assert folder_name("rate=8") == "rate_8" and folder_name("paged") == "paged" and folder_name("a/b\\c") == "a_b_c"
    assert folder_name("ünïcode-1.5") == "ünïcode-1.5"
    for bad in ("", ".", "..", "/", "\x00", "x" * 256):
        with pytest.raises(SimkvError):
            plain_name(bad)
    with pytest.raises(SimkvError):
        folder_name("..")
    assert plain_name("my run") == "my run"
    with pytest.raises(SimkvError, match="leads out of the results folder"):
        write_file(tmp_path / "a" / ".." / "b.txt", "x", root=tmp_path / "a")
    with pytest.raises(SimkvError, match="not inside the results folder"):
        write_file(tmp_path / "b.txt", "x", root=tmp_path / "a")
    assert not (tmp_path / "b.txt").exists()
    write_file(tmp_path / "r" / "deep" / "f.txt", "héllo\n", root=tmp_path / "r")
    assert (tmp_path / "r" / "deep" / "f.txt").read_bytes() == "héllo\n".encode()
    (tmp_path / "r" / "dir.txt").mkdir()
    with pytest.raises(SimkvError, match="in the way"):
        write_file(tmp_path / "r" / "dir.txt", "x", root=tmp_path / "r")


def test_simkv_sweep_refuses_a_symlinked_points_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "s.yaml").write_text(f"base: {ROOT / 'scenarios' / 'quickstart.yaml'}\n"
                                     "set: {run.num_requests: 40, run.warmup_s: 0}\ngrid: {workload.arrival.rate: [4]}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "points").symlink_to(elsewhere, target_is_directory=True)
    proc = run_cli("sweep", str(tmp_path / "s.yaml"), "-o", str(out), "--workers", "1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"simkv: error: {out / 'points'}: output folder: is a symbolic link")
    assert list(elsewhere.iterdir()) == []
    proc = run_cli("sweep", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "no" / "out"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and not (tmp_path / "no").exists()


def test_saved_scenario_reloads_with_its_preset(tmp_path):
    """scenario.json keeps only what the scenario set, so a reloaded scenario resolves its preset
    exactly as the original (a full dump would mark every engine field as set)."""
    from conftest import small_scenario
    from simkv.build import resolve_engine
    from simkv.result import Result
    sc = small_scenario(engine={"preset": "tgi", "num_gpu_blocks": 64, "max_model_len": 512})
    res = simkv.simulate(sc)
    res.save(tmp_path / "out")
    again = Result.load(tmp_path / "out").scenario
    assert resolve_engine(again) == resolve_engine(sc)
    assert resolve_engine(again).scheduler == "tgi"
