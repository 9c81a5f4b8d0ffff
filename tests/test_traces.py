"""Trace replay: the shipped traces' statistics, exact replay, speed/window/sample, user files,
Mooncake prefix ids on the prefix cache, and bad traces."""

from __future__ import annotations

import numpy as np
import pytest

import simkv
from simkv.simulate import build_simulation
from simkv.scenario import TraceSpec
from simkv.simulate import run_simulation
from simkv.files.traces import read_trace, trace_stats, trace_for
from simkv.workload.stream import generate_stream

from conftest import run_cli

# the traces README's table (../shared/traces/README.md, copied to simkv/workload/traces/)
README = {
    "azure2023_conv": (19366, 3501.7, 5.53, (1154.7, 1020, 4142, 14050), (211.1, 129, 601, 1000)),
    "mooncake_conversation": (12031, 3537.0, 3.40, (12035.1, 6909, 85400.4, 126195), (342.6, 350, 1118.5, 2000)),
    "mooncake_synthetic": (3993, 1022.0, 3.91, (15325.5, 11587, 66456.2, 191378), (149.1, 69, 768.1, 893)),
    "lengths_sharegpt_8k_llama2": (30731, None, None, (2340.0, 1730, 7433.7, 8141), (438.7, 415, 998, 1024)),
    "lengths_arxiv_summarization_llama2": (28257, None, None, (2588.1, 2730, 3933.4, 4054), (291.4, 167, 3271.3, 4056)),
    "lengths_bwb_llama2": (33768, None, None, (1067.2, 1037, 1800, 3504), (1612.8, 1601, 2533, 2858)),
}


@pytest.mark.parametrize("name", sorted(README))
def test_trace_stats_reproduce_the_readme(name):
    n, span, rate, prompt, output = README[name]
    s = trace_stats(read_trace(TraceSpec(name=name)))
    assert s["requests"] == n
    if span is not None:
        assert round(s["span_s"], 1) == span and round(s["mean_rate_per_s"], 2) == rate
    for key, want in (("prompt_tokens", prompt), ("output_tokens", output)):
        d = s[key]
        assert (round(d["mean"], 1), round(d["p50"], 1), round(d["p99"], 1), d["max"]) == pytest.approx(want)


def _scenario(trace: dict, **run):
    return simkv.Scenario(**{"model": "qwen2.5-7b", "hardware": {"gpu": "h100"},
                             "engine": {"max_model_len": 32768, "max_num_batched_tokens": 32768},
                             "workload": {"trace": trace, "max_new_tokens": {"policy": "exact"}},
                             "run": {"seed": 1, **run}})


def test_replay_keeps_every_arrival_and_length_exactly():
    data = read_trace(TraceSpec(name="azure2023_conv"))
    sc = _scenario({"name": "azure2023_conv"}, num_requests=500)
    stream = generate_stream(sc.workload, sc.run, trace_for(sc.workload.trace))
    np.testing.assert_array_equal(stream.arrival_s, data.arrival_s[:500])
    np.testing.assert_array_equal(stream.prompt_tokens, data.prompt_tokens[:500])
    np.testing.assert_array_equal(stream.output_tokens, data.output_tokens[:500])
    res = simkv.simulate(sc)
    np.testing.assert_array_equal(res.requests["arrival_s"], data.arrival_s[:500])
    assert res.summary["requests"]["completed"] == 500


def test_speed_window_and_sample():
    full = generate_stream(*_parts({"name": "azure2023_conv"}))
    fast = generate_stream(*_parts({"name": "azure2023_conv", "speed": 2.0}))
    assert fast.arrival_s[-1] == pytest.approx(full.arrival_s[-1] / 2)           # 2x speed halves the span
    win = generate_stream(*_parts({"name": "azure2023_conv", "window_s": [600, 1200]}))
    assert win.arrival_s.min() >= 0 and win.arrival_s.max() < 600
    assert len(win.arrival_s) == int(((full.arrival_s >= 600) & (full.arrival_s < 1200)).sum())
    half = generate_stream(*_parts({"name": "azure2023_conv", "sample": 0.5}))
    assert len(half.arrival_s) == pytest.approx(len(full.arrival_s) / 2, rel=0.05)


def _parts(trace: dict):
    sc = _scenario(trace)
    return sc.workload, sc.run, trace_for(sc.workload.trace)


def test_lengths_only_trace_is_resampled_under_an_arrival_process():
    sc = simkv.Scenario(**{"model": "llama3-8b", "hardware": {"gpu": "h100"},
                           "workload": {"trace": {"name": "lengths_sharegpt_8k_llama2"},
                                        "arrival": {"process": "poisson", "rate": 5}},
                           "run": {"seed": 2, "num_requests": 2000}})
    stream = generate_stream(sc.workload, sc.run, trace_for(sc.workload.trace))
    table = read_trace(TraceSpec(name="lengths_sharegpt_8k_llama2"))
    pairs = set(zip(table.prompt_tokens.tolist(), table.output_tokens.tolist()))
    assert all(p in pairs for p in zip(stream.prompt_tokens.tolist(), stream.output_tokens.tolist()))
    assert stream.prompt_tokens.mean() == pytest.approx(2340, rel=0.08)


def test_user_csv_and_jsonl_with_column_mapping(tmp_path):
    (tmp_path / "t.csv").write_text("ts_ms,inp,out\n0,100,20\n1500,50,5\n1500,70,9\n")
    (tmp_path / "t.jsonl").write_text('{"t": 0.0, "p": 100, "o": 20}\n{"t": 1.5, "p": 50, "o": 5}\n')
    a = read_trace(TraceSpec(path="t.csv", time_unit="ms", columns={"arrival": "ts_ms", "prompt": "inp", "output": "out"}), tmp_path)
    b = read_trace(TraceSpec(path="t.jsonl", columns={"arrival": "t", "prompt": "p", "output": "o"}), tmp_path)
    assert a.arrival_s.tolist() == [0.0, 1.5, 1.5] and a.prompt_tokens.tolist() == [100, 50, 70]
    assert b.arrival_s.tolist() == [0.0, 1.5] and b.output_tokens.tolist() == [20, 5]


def test_mooncake_block_ids_feed_the_prefix_cache():
    def run(caching):
        sc = simkv.Scenario(**{"model": "qwen2.5-7b", "hardware": {"gpu": "h100"},
                               "engine": {"preset": "vllm-v1", "max_model_len": 32768, "prefix_caching": caching},
                               "workload": {"trace": {"name": "mooncake_synthetic"},
                                            "max_new_tokens": {"policy": "exact"}},
                               "run": {"seed": 0}})
        return simkv.simulate(sc).summary
    on, off = run(True), run(False)
    assert on["kv_cache"]["prefix_cache"]["hit_rate"] > 0.1     # 20% measured (README's ideal: 65%, infinite cache)
    assert "prefix_cache" not in off["kv_cache"]
    assert on["latency_s"]["ttft"]["p99"] < 0.5 * off["latency_s"]["ttft"]["p99"]


BAD = {
    "missing column": ("t,p\n0,5\n", "no column 'o'"),
    "non-numeric tokens": ("t,p,o\n0,five,3\n", "not a number"),
    "negative timestamp": ("t,p,o\n-1,5,3\n", "negative"),
    "decreasing timestamps": ("t,p,o\n5,5,3\n2,5,3\n", "earlier than the line before"),
    "empty file": ("", "empty"),
    "header only": ("t,p,o\n", "no requests"),
    "zero tokens": ("t,p,o\n0,0,3\n", ">= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_traces_give_clear_errors(tmp_path, case):
    text, needle = BAD[case]
    (tmp_path / "t.csv").write_text(text)
    proc = run_cli("trace", "stats", tmp_path / "t.csv", "--arrival", "t", "--prompt", "p", "--output", "o")
    assert proc.returncode == 2, proc.stdout
    assert needle in proc.stderr and "t.csv" in proc.stderr and "Traceback" not in proc.stderr


def test_large_trace_is_read_line_by_line(tmp_path):
    path = tmp_path / "big.csv"
    with path.open("w") as fh:
        fh.write("t,p,o\n")
        for i in range(300_000):
            fh.write(f"{i * 0.01:.2f},{100 + i % 900},{1 + i % 300}\n")
    data = read_trace(TraceSpec(path=str(path), columns={"arrival": "t", "prompt": "p", "output": "o"}))
    assert data.num_requests == 300_000 and data.prompt_tokens.dtype == np.int64
    assert data.arrival_s[-1] == pytest.approx(2999.99)


def _session_scenario(preset="vllm-v1", caching=True, **over):
    raw = {"model": "llama3-8b", "hardware": {"gpu": "h100"},
           "engine": {"preset": preset, "max_model_len": 8192, "prefix_caching": caching, "num_gpu_blocks": 6000},
           "workload": {"arrival": {"process": "poisson", "rate": 2.0},
                        "prompt_tokens": {"dist": "uniform", "low": 500, "high": 1500},
                        "output_tokens": {"dist": "uniform", "low": 50, "high": 300},
                        "sessions": {"turns": {"dist": "uniform", "low": 1, "high": 6}, "think_s": 5.0,
                                     "user_tokens": {"dist": "uniform", "low": 20, "high": 200}}},
           "run": {"seed": 4, "num_requests": 60}}
    raw.update(over)
    return simkv.Scenario(**raw)


def test_sessions_send_each_turn_a_think_time_after_the_previous_answer():
    sc = _session_scenario()
    sim = build_simulation(sc, generate_stream(sc.workload, sc.run))
    res = run_simulation(sim, "base")
    t = sim.table
    follow = np.flatnonzero(t.session[1:] == t.session[:-1]) + 1          # rows that continue a session
    assert len(follow) > 60
    prev = follow - 1
    ok = t.status[follow] == 1
    np.testing.assert_allclose(t.arrival_s[follow][ok], (t.finish_s[prev] + t.think_s[follow])[ok], rtol=1e-12)
    assert (t.prompt_tokens[follow] > t.prompt_tokens[prev] + t.output_tokens[prev]).all()   # history + new message
    assert res.summary["kv_cache"]["prefix_cache"]["hit_rate"] > 0.5    # the history is reused turn after turn


def test_sessions_with_and_without_prefix_caching_and_fast_forward():
    on = simkv.simulate(_session_scenario()).summary
    off = simkv.simulate(_session_scenario(caching=False)).summary
    assert on["latency_s"]["ttft"]["p50"] < off["latency_s"]["ttft"]["p50"]
    sc = _session_scenario(preset="simkv", caching=False)
    fast = build_simulation(sc, generate_stream(sc.workload, sc.run))
    slow = build_simulation(sc, generate_stream(sc.workload, sc.run))
    slow.scheduler.max_repeat = 1
    run_simulation(fast, "a"), run_simulation(slow, "b")
    np.testing.assert_allclose(fast.table.finish_s, slow.table.finish_s, rtol=1e-9)
    np.testing.assert_allclose(fast.table.arrival_s, slow.table.arrival_s, rtol=1e-9)


def test_user_trace_with_sessions_and_block_ids(tmp_path):
    rows = []
    for conv in range(30):          # 3 turns each: every turn's prompt holds the earlier ones
        for turn in range(3):
            rows.append({"t": conv * 2.0 + turn * 20.0, "p": 600 * (turn + 1), "o": 40, "conv": f"c{conv}"})
    rows.sort(key=lambda r: r["t"])
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    def run(columns):
        sc = simkv.Scenario(**{"model": "llama3-8b", "hardware": {"gpu": "h100"},
                               "engine": {"preset": "vllm-v1", "max_model_len": 8192},
                               "workload": {"trace": {"path": str(path), "columns": columns}, "max_new_tokens": {"policy": "exact"}},
                               "run": {"seed": 0}})
        return simkv.simulate(sc).summary["kv_cache"]["prefix_cache"]
    plain = run({"arrival": "t", "prompt": "p", "output": "o"})
    sessions = run({"arrival": "t", "prompt": "p", "output": "o", "session": "conv"})
    assert plain["hit_tokens"] == 0
    assert sessions["hit_rate"] > 0.4 and sessions["block_hit_rate"] > 0.4
    ids = tmp_path / "ids.csv"
    ids.write_text("t,p,o,blocks\n0,1024,10,\"[7, 8]\"\n5,1024,10,\"[7, 9]\"\n")
    data = read_trace(TraceSpec(path=str(ids), columns={"arrival": "t", "prompt": "p", "output": "o",
                                                        "block_ids": "blocks", "block_tokens": 512}))
    assert data.block_ids == [[7, 8], [7, 9]] and data.block_tokens == 512


def test_replay_window_stops_reading_early(tmp_path):
    path = tmp_path / "long.csv"
    with path.open("w") as fh:
        fh.write("t,p,o\n0,5,5\n1,5,5\n100,5,5\n")
        fh.write("oops,not,a-number\n")   # past the window: never read
    data = read_trace(TraceSpec(path=str(path), window_s=[0, 50], columns={"arrival": "t", "prompt": "p", "output": "o"}))
    assert data.num_requests == 2
