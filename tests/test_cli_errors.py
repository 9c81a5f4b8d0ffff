"""Bad input as a new user would type it: one paragraph naming file and field, exit 2, no traceback."""

from __future__ import annotations

import textwrap

import pytest

from simkv.cli import main

from conftest import cli_process, run_cli

GOOD = textwrap.dedent("""\
    name: t
    model: llama3-8b
    hardware: {gpu: h100}
    engine: {max_model_len: 4096}
    workload:
      arrival: {process: poisson, rate: 5}
      prompt_tokens: {dist: fixed, value: 100}
      output_tokens: {dist: fixed, value: 20}
    run: {seed: 1, num_requests: 50}
    """)


def _run(tmp_path, text: str | None, *extra, name="s.yaml"):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    proc = run_cli("run", path, "-q", "--no-figures", "-o", tmp_path / "out", *extra)
    return proc


def _assert_clean_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_good_scenario_runs(tmp_path):
    proc = _run(tmp_path, GOOD)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "summary.json").exists()


def test_missing_file(tmp_path):
    _assert_clean_error(_run(tmp_path, None, name="nope.yaml"), "nope.yaml", "file not found")


def test_yaml_syntax_error(tmp_path):
    _assert_clean_error(_run(tmp_path, GOOD.replace("hardware: {gpu: h100}", "hardware: {gpu: h100")),
                        "s.yaml", "YAML syntax error at line")


def test_misspelt_field_suggests_the_right_one(tmp_path):
    proc = _run(tmp_path, GOOD.replace("engine: {max_model_len", "engine: {max_model_lenght"))
    _assert_clean_error(proc, "s.yaml", "engine.max_model_lenght", "did you mean 'max_model_len'")


def test_misspelt_nested_union_field(tmp_path):
    proc = _run(tmp_path, GOOD.replace("{process: poisson, rate: 5}", "{process: poisson, rte: 5}"))
    _assert_clean_error(proc, "workload.arrival.rte", "did you mean 'rate'")


def test_unknown_model_name_suggests(tmp_path):
    _assert_clean_error(_run(tmp_path, GOOD.replace("llama3-8b", "llama3-8")), "model", "did you mean 'llama3-8b'")


@pytest.mark.parametrize("rate", ["-3", "0"])
def test_non_positive_rate(tmp_path, rate):
    _assert_clean_error(_run(tmp_path, GOOD.replace("rate: 5", f"rate: {rate}")),
                        "workload.arrival.rate", "greater than 0")


def test_model_that_does_not_fit(tmp_path):
    text = GOOD.replace("llama3-8b", "llama3-70b").replace("gpu: h100", "gpu: a100-40gb")
    _assert_clean_error(_run(tmp_path, text), "does not fit", "tensor_parallel")


def test_kv_cache_smaller_than_one_request(tmp_path):
    text = GOOD.replace("engine: {max_model_len: 4096}", "engine: {max_model_len: 8192, gpu_memory_utilization: 0.21}")
    _assert_clean_error(_run(tmp_path, text), "engine.max_model_len", "fewer than one")


def test_overlong_requests_are_rejected_and_counted(tmp_path):
    proc = _run(tmp_path, GOOD.replace("value: 100", "value: 5000"))
    assert proc.returncode == 0, proc.stderr
    import json
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["requests"]["rejected"] == 50
    assert summary["requests"]["rejected_by_reason"] == {"prompt longer than max_model_len": 50}


def test_empty_workload(tmp_path):
    text = GOOD.replace("num_requests: 50", "duration_s: 0.001").replace("rate: 5", "rate: 0.01")
    _assert_clean_error(_run(tmp_path, text), "run.duration_s", "no requests")


def test_missing_required_section(tmp_path):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith("hardware"))
    _assert_clean_error(_run(tmp_path, text), "hardware", "required field is missing")


def test_both_or_neither_run_length(tmp_path):
    _assert_clean_error(_run(tmp_path, GOOD.replace("num_requests: 50", "num_requests: 50, duration_s: 9")),
                        "run", "exactly one of num_requests and duration_s")


def test_bad_override(tmp_path):
    """In a process of its own (the other tests here call simkv.cli.main in this one): the real
    entry point prints the one-line error and exits 2."""
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    proc = cli_process("run", path, "--set", "engine.block_sise=32")
    _assert_clean_error(proc, "engine.block_sise", "did you mean 'block_size'")
    here = run_cli("run", path, "--set", "engine.block_sise=32")   # the in-process runner is a faithful stand-in
    assert (here.returncode, here.stdout, here.stderr) == (proc.returncode, proc.stdout, proc.stderr)


def test_the_in_process_runner_reports_usage_errors_as_a_process_does(tmp_path):
    """argparse's errors exit through SystemExit: run_cli returns its status and message as a process would."""
    args = ["run", str(tmp_path / "s.yaml"), "--no-such-flag"]
    proc, here = cli_process(*args), run_cli(*args)
    assert proc.returncode == 2 and "unrecognized arguments: --no-such-flag" in proc.stderr
    assert (here.returncode, here.stdout, here.stderr) == (proc.returncode, proc.stdout, proc.stderr)


def test_variant_touching_the_stream_is_refused(tmp_path):
    text = GOOD + "variants:\n  - name: a\n    set: {workload.arrival.rate: 9}\n"
    _assert_clean_error(_run(tmp_path, text), "variants", "identical stream")


def test_variant_with_bad_value(tmp_path):
    text = GOOD + "variants:\n  - name: a\n    set: {engine.allocator: pagd}\n"
    _assert_clean_error(_run(tmp_path, text), "variants[0]", "engine.allocator")


def test_not_a_mapping_and_empty_file(tmp_path):
    _assert_clean_error(_run(tmp_path, "- a\n- b\n"), "expected a mapping")
    _assert_clean_error(_run(tmp_path, ""), "empty")


def test_schema_and_catalog_commands(capsys):
    assert main(["schema"]) == 0
    import json
    schema = json.loads(capsys.readouterr().out)
    assert {"model", "hardware", "engine", "workload", "run", "variants", "sweep"} <= set(schema["properties"])
    assert "(requests/s)" in json.dumps(schema)  # units are in the field descriptions
    assert main(["catalog", "--presets"]) == 0
    out = capsys.readouterr().out
    assert "vllm-v1" in out and "tgi" in out and "source:" in out
    assert main(["catalog"]) == 0
    out = capsys.readouterr().out
    for name in ("llama3-8b", "llama3-70b", "llama2-7b", "llama2-13b", "mistral-7b", "qwen2.5-7b", "opt-13b",
                 "h100", "h200", "a100-80gb", "a100-40gb"):
        assert name in out
