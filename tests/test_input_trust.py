"""Untrusted scenario input: YAML surprises, values that would fail deep inside, runs that would
never end, ignored overrides. Each through the CLI: exit 2, one line
`simkv: error: <file>: <field>: <problem>; fix: <what to do>`, no traceback, within seconds."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simkv.errors import SimkvError
from simkv.files.scenario_file import load_scenario

from conftest import ROOT, run_cli

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

LINE = re.compile(r"^simkv: error: [^:\n]+\.yaml: [^\n]+: [^\n]+; fix: [^\n]+$")


def _cli(tmp_path, text, *extra, name="s.yaml", out=None, timeout=60):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    return run_cli("run", path, "-q", "--no-figures", "-o", out or tmp_path / "out", *extra, timeout=timeout)


def _error(proc, *needles) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert LINE.match(err), err
    for needle in needles:
        assert needle in err, err
    return err


# ---------------------------------------------------------------- 1. YAML


def test_duplicate_top_level_key_names_key_and_line(tmp_path):
    _error(_cli(tmp_path, GOOD + "engine: {block_size: 32}\n"), "duplicate key 'engine'", "line 10",
           "first given at line 4")


def test_duplicate_nested_key(tmp_path):
    text = GOOD.replace("run: {seed: 1, num_requests: 50}", "run:\n  seed: 1\n  num_requests: 50\n  seed: 2")
    _error(_cli(tmp_path, text), "duplicate key 'seed'", "line 12")


def test_duplicate_key_in_an_override(tmp_path):
    _error(_cli(tmp_path, GOOD, "--set", "engine={block_size: 8, block_size: 16}"), "s.yaml: --set engine", "duplicate key")


@pytest.mark.parametrize("key", ["1", "true", "null", "[a, b]"])
def test_non_text_keys(tmp_path, key):
    prefix = "? " if key.startswith("[") else ""
    _error(_cli(tmp_path, GOOD + f"{prefix}{key}: x\n"), "is not text", "line 10")


def test_5000_digit_integer(tmp_path):
    _error(_cli(tmp_path, GOOD.replace("seed: 1", "seed: " + "9" * 5000)), "5000 digits", "line 9")


def test_5000_digit_integer_in_override(tmp_path):
    _error(_cli(tmp_path, GOOD, "--set", "run.seed=" + "7" * 5000), "--set run.seed", "5000 digits")


def test_deep_nesting(tmp_path):
    _error(_cli(tmp_path, GOOD + "description: " + "[" * 3000 + "]" * 3000 + "\n"), "nesting deeper than")


def test_billion_laughs(tmp_path):
    levels = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    proc = _cli(tmp_path, GOOD + "description: [" + ", ".join(levels) + "]\n", timeout=30)
    _error(proc, "aliases expand to more than")


def test_recursive_alias(tmp_path):
    _error(_cli(tmp_path, GOOD + "description: &d [1, *d]\n"), "alias refers to")


def test_plain_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(GOOD.replace("max_model_len: 4096", "max_model_len: &len 4096")
                    + "slo: {<<: {ttft_s: 1.0}, tpot_s: 0.1}\n"
                    + "variants:\n  - {name: a, set: {engine.block_size: 16}}\n  - {name: b, set: {engine.max_model_len: *len}}\n")
    sc = load_scenario(path)
    assert sc.variants[1].set == {"engine.max_model_len": 4096} and sc.slo.ttft_s == 1.0 and sc.slo.tpot_s == 0.1


@pytest.mark.parametrize("field,old,new", [
    ("engine.block_size", "{max_model_len: 4096}", "{max_model_len: 4096, block_size: true}"),
    ("workload.arrival.rate", "rate: 5", "rate: true"),
    ("run.num_requests", "num_requests: 50", "num_requests: false"),
])
def test_booleans_are_not_numbers(tmp_path, field, old, new):
    _error(_cli(tmp_path, GOOD.replace(old, new)), field, "expected a number, got the boolean")


@pytest.mark.parametrize("value,needle", [("1:30", "'1:30'"), ("'7'", "'7'"), ("1_000", "'1_000'")])
def test_sexagesimal_and_quoted_numbers_are_text(tmp_path, value, needle):
    _error(_cli(tmp_path, GOOD.replace("seed: 1", f"seed: {value}")), "run.seed", needle)


@pytest.mark.parametrize("word", ["on", "yes", "off", "no", "1"])
def test_yaml11_booleans_are_refused(tmp_path, word):
    text = GOOD.replace("{max_model_len: 4096}", f"{{max_model_len: 4096, prefix_caching: {word}}}")
    _error(_cli(tmp_path, text), "engine.prefix_caching", "write true or false")


def test_yaml12_scalars(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD.replace("seed: 1", "seed: 010").replace("name: t", "name: 2024-01-01")
                    .replace("rate: 5", "rate: 5")  # an int for a float field is fine
                    .replace("{max_model_len: 4096}", "{max_model_len: 0x1000, prefix_caching: True}"))
    sc = load_scenario(path)
    assert sc.run.seed == 10 and sc.name == "2024-01-01" and sc.engine.max_model_len == 4096
    assert sc.workload.arrival.rate == 5.0 and sc.engine.prefix_caching is True


@pytest.mark.parametrize("value", [".inf", ".nan", "1e999"])
def test_non_finite_numbers(tmp_path, value):
    _error(_cli(tmp_path, GOOD.replace("rate: 5", f"rate: {value}")), "workload.arrival.rate", "finite")


# ---------------------------------------------------------------- 2. values that failed deep inside


def test_watermark_out_of_range(tmp_path):
    text = GOOD.replace("{max_model_len: 4096}", "{max_model_len: 4096, watermark: 0.8}")
    _error(_cli(tmp_path, text), "engine.watermark", "less than or equal to 0.5")


def test_watermark_leaving_no_room_for_a_request(tmp_path):
    # 349 blocks of 16 tokens; 30% kept free leaves 3,904 tokens: a 4,000-token prompt waited forever
    text = GOOD.replace("{max_model_len: 4096}", "{max_model_len: 4096, watermark: 0.3, gpu_memory_utilization: 0.205}")
    _error(_cli(tmp_path, text.replace("value: 100", "value: 4000"), timeout=30), "engine.watermark",
           "could never be admitted")


@pytest.mark.parametrize("field", ["weight_dtype", "kv_cache_dtype"])
def test_fp8_on_a_gpu_without_fp8(tmp_path, field):
    text = GOOD.replace("gpu: h100", "gpu: a100-80gb").replace("{max_model_len: 4096}", f"{{max_model_len: 4096, {field}: fp8}}")
    _error(_cli(tmp_path, text), f"engine.{field}", "no fp8 support")


def test_fp8_in_a_variant(tmp_path):
    text = GOOD.replace("gpu: h100", "gpu: a100-80gb") + "variants:\n  - {name: a, set: {engine.kv_cache_dtype: fp8}}\n"
    _error(_cli(tmp_path, text), "variants[0] (a): engine.kv_cache_dtype", "no fp8 support")


def test_output_into_a_missing_parent_is_a_clear_error(tmp_path):
    """Only the -o folder itself is created: a missing parent is more often a typo than a wish."""
    proc = _cli(tmp_path, GOOD, out=tmp_path / "no" / "such" / "deep" / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("simkv: error: ") and "output folder" in proc.stderr and "; fix: " in proc.stderr
    assert not (tmp_path / "no").exists()


def test_long_scenario_name(tmp_path):
    _error(_cli(tmp_path, GOOD.replace("name: t", "name: " + "é" * 200)), "name", "400 bytes")


@pytest.mark.parametrize("name", ["summary.json", "report.md", "Comparison.csv", "..", "x" * 256])
def test_variant_names_that_cannot_be_folders(tmp_path, name):
    text = GOOD + f"variants:\n  - {{name: a}}\n  - {{name: '{name}'}}\n"
    _error(_cli(tmp_path, text), "variants[1].name")


# ---------------------------------------------------------------- 3. never-ending runs


@pytest.mark.parametrize("arrival,needle", [
    ("{process: piecewise, times_s: [0, 10], rates: [5, 0]}", "the rate is 0 after the last knot"),
    ("{process: onoff, rate_on: 1.0e-300, on_s: 1, off_s: 1}", "long-run rate"),
    ("{process: onoff, rate_on: 10, on_s: 1.0e-9, off_s: 1.0e-9}", "on/off periods"),
    ("{process: spike, rate: 5, factor: 1.0e-308, start_s: 1, duration_s: 1.0e+15}", "long-run rate"),
    ("{process: spike, rate: 5, factor: 1.0e+300, start_s: 1, duration_s: 10}", "less than or equal"),
    ("{process: poisson, rate: 1.0e-300}", "long-run rate"),
])
def test_arrivals_that_never_reach_num_requests(tmp_path, arrival, needle):
    text = GOOD.replace("{process: poisson, rate: 5}", arrival)
    _error(_cli(tmp_path, text, timeout=30), "workload.arrival", needle)


def test_duration_with_too_many_requests(tmp_path):
    text = GOOD.replace("num_requests: 50", "duration_s: 1.0e+300")
    _error(_cli(tmp_path, text, timeout=30), "workload.arrival", "requests arrive in run.duration_s")


def test_arrival_sampler_stops_by_itself():
    """The sampler's own bound (the backstop behind the load-time check)."""
    from simkv.scenario import PiecewiseArrivals
    from simkv.workload.arrivals import _varying_times
    spec = PiecewiseArrivals(process="piecewise", times_s=[0, 10], rates=[5, 0])
    with pytest.raises(SimkvError, match="cannot reach run.num_requests"):
        _varying_times(spec, np.random.default_rng(0), None, 10_000)


@pytest.mark.parametrize("gpu", [
    "{memory_gib: 80, hbm_bandwidth_gbps: 1.0e-308, bf16_tflops: 300, host_link_gbps: 32}",
    "{memory_gib: 80, hbm_bandwidth_gbps: 2000, bf16_tflops: 1.0e-308, host_link_gbps: 32}",
    "{memory_gib: 80, hbm_bandwidth_gbps: 2000, bf16_tflops: 300, host_link_gbps: 32, nvlink_gbps: 1.0e+308}",
])
def test_implausible_gpu_numbers(tmp_path, gpu):
    text = GOOD.replace("hardware: {gpu: h100}", "hardware: {gpu: mine}") + f"gpus:\n  mine: {gpu}\n"
    _error(_cli(tmp_path, text, timeout=30), "gpus.mine.")


def test_implausible_gpu_in_catalog_file(tmp_path):
    (tmp_path / "cat.yaml").write_text("gpus:\n  slow: {memory_gib: 80, hbm_bandwidth_gbps: 1.0e-308, "
                                       "bf16_tflops: 300, host_link_gbps: 32}\n")
    text = GOOD.replace("gpu: h100", "gpu: slow") + "catalog_files: [cat.yaml]\n"
    _error(_cli(tmp_path, text, timeout=30), "cat.yaml", "hbm_bandwidth_gbps")


@pytest.mark.parametrize("body", ["gpus: [a, b]\n", "gpus:\n  slow: 5\n"])
def test_malformed_catalog_file(tmp_path, body):
    (tmp_path / "cat.yaml").write_text(body)
    _error(_cli(tmp_path, GOOD + "catalog_files: [cat.yaml]\n", timeout=30), "cat.yaml", "expected a mapping")


def test_enormous_host_overhead(tmp_path):
    _error(_cli(tmp_path, GOOD, "--set", "engine.host_overhead_s=1e308", timeout=30), "engine.host_overhead_s")


def test_engine_refuses_non_finite_step_times():
    from simkv.engine import _check_step_times
    _check_step_times(np.array([0.01, 0.02]))
    for bad in (np.inf, np.nan, -1.0, 1e300):
        with pytest.raises(SimkvError, match="step time"):
            _check_step_times(np.array([0.01, bad]))


def test_roofline_refuses_zero_ceilings():
    from simkv.catalog import builtin_gpus, builtin_models
    from simkv.cost.roofline import RooflineCost
    gpu = builtin_gpus()["a100-80gb"].model_copy(update={"hbm_bandwidth_gbps": 0.0})
    with pytest.raises(SimkvError, match="memory bandwidth"):
        RooflineCost(builtin_models()["llama3-8b"], gpu)


# ---------------------------------------------------------------- 4. overrides that were ignored


def test_catalog_files_override_is_applied(tmp_path):
    (tmp_path / "extra.yaml").write_text("models:\n  tiny:\n    {num_layers: 2, hidden_size: 256, num_heads: 4, "
                                         "num_kv_heads: 4, head_dim: 64, intermediate_size: 512, vocab_size: 1000, "
                                         "num_params: 3000000, max_position_embeddings: 4096}\n")
    path = tmp_path / "s.yaml"
    path.write_text(GOOD.replace("model: llama3-8b", "model: tiny"))
    sc = load_scenario(path, ["catalog_files=[extra.yaml]"])
    assert sc.model_spec().num_layers == 2
    proc = _cli(tmp_path, None, "--set", "catalog_files=[extra.yaml]")
    assert proc.returncode == 0, proc.stderr
    # and an override can then change an entry of that catalog file
    assert load_scenario(path, ["catalog_files=[extra.yaml]", "models.tiny.num_layers=4"]).model_spec().num_layers == 4


def test_catalog_files_must_be_a_list_of_names(tmp_path):
    _error(_cli(tmp_path, GOOD, "--set", "catalog_files=5"), "catalog_files", "list of catalog file names")


def test_trace_path_override_is_relative_to_the_scenario(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "t.csv").write_text("arrival,prompt,output\n0.1,10,5\n0.2,20,5\n")
    path = sub / "s.yaml"
    text = GOOD.replace("""  arrival: {process: poisson, rate: 5}
  prompt_tokens: {dist: fixed, value: 100}
  output_tokens: {dist: fixed, value: 20}
""", "  trace: {path: missing.csv, columns: {arrival: arrival, prompt: prompt, output: output}}\n")
    path.write_text(text.replace("run: {seed: 1, num_requests: 50}", "run: {seed: 1}"))
    sc = load_scenario(path, ["workload.trace.path=t.csv"])
    assert Path(sc.workload.trace.path) == (sub / "t.csv").resolve()


# ---------------------------------------------------------------- 5. suggestions


def test_no_far_fetched_suggestion(tmp_path):
    err = _error(_cli(tmp_path, GOOD + "cluster: {nodes: 2}\n"), "unknown field 'cluster'")
    assert "did you mean" not in err and "cost" in err  # the valid fields are listed instead


def test_close_misspelling_is_suggested(tmp_path):
    _error(_cli(tmp_path, GOOD.replace("engine:", "engien:")), "did you mean 'engine'")


# ---------------------------------------------------------------- fuzz


_SHIPPED = (ROOT / "scenarios" / "quickstart.yaml").read_text().splitlines()
_SCALARS = ["true", "no", "on", "1:30", "010", "0x1F", "1e999", ".nan", "-.inf", "~", "", "'5'", "9" * 400,
            "&a [1, *a]", "*nope", "[", "{", "}", "- x", "!!python/object:os.system", "!!int 1:2", "2024-01-01",
            "{a: 1, a: 2}", "[[[[[[]]]]]]", "-1", "0", "1e-308", "1e308", "\"\\u0000\"", "é" * 300, "0.8"]


@st.composite
def _mutated(draw) -> str:
    lines = list(_SHIPPED)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["value", "dup", "drop", "indent", "char"]))
        line = lines[i]
        if kind == "value" and ":" in line:
            key = line.split(":", 1)[0]
            lines[i] = f"{key}: {draw(st.sampled_from(_SCALARS))}"
        elif kind == "dup":
            lines.insert(draw(st.integers(0, len(lines))), line)
        elif kind == "drop":
            del lines[i]
        elif kind == "indent":
            lines[i] = draw(st.sampled_from(["", "  ", "    ", "\t"])) + line.lstrip()
        elif line:
            j = draw(st.integers(0, len(line)))
            lines[i] = line[:j] + draw(st.sampled_from(list(":-[]{}&*!#'\"|>%@` \\"))) + line[j:]
        if not lines:
            break
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_mutated())
@example(text="\n".join(_SHIPPED).replace("seed: 0", "seed: " + "9" * 5000))        # ValueError before
@example(text="\n".join(_SHIPPED) + "\ndescription: " + "[" * 3000 + "]" * 3000)  # RecursionError before
@example(text="\n".join(_SHIPPED).replace("block_size: 16", "block_size: {a: 1}\n  engine: {}"))
def test_fuzzed_scenarios_load_or_raise_simkv_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_scenario(path)
    except SimkvError as err:
        assert err.render()


def test_sglang_prefill_budget_below_one_page_is_refused():
    """SGLang aligns prefill chunks to pages: a token budget below one page could never prefill a
    prompt (the run would stop with an internal error); the builder says so instead."""
    import simkv
    from simkv.errors import SimkvError
    from simkv.files.scenario_file import validate_scenario
    raw = dict(name="x", model="llama3-8b", hardware={"gpu": "h100"},
               engine={"preset": "sglang", "block_size": 16, "max_num_batched_tokens": 8},
               workload={"arrival": {"process": "poisson", "rate": 1.0}, "prompt_tokens": {"dist": "fixed", "value": 100},
                         "output_tokens": {"dist": "fixed", "value": 10}},
               run={"seed": 0, "num_requests": 5})
    with pytest.raises(SimkvError, match="below one page"):
        simkv.simulate(validate_scenario(raw, "x.yaml"))
