"""Every bad trace is one clear error through `simkv run` (exit 2, `simkv: error: <file>: <field>:
<problem>` and a fix, no traceback, within seconds); parallel sampling over a trace; and a fuzz
test mutating valid traces: the loader either reads them or raises SimkvError, nothing else."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import time

import numpy as np
import pytest

import simkv
from simkv.errors import SimkvError
from simkv.scenario import TraceSpec
from simkv.files.traces import read_trace
from simkv.simulate import simulate_all
from simkv.workload.stream import generate_stream

from conftest import run_cli

CSV_COLS = {"arrival": "t", "prompt": "p", "output": "o"}
SCENARIO = """\
name: t
model: llama3-8b
hardware: {{gpu: h100}}
engine: {{max_model_len: 4096}}
workload:
  trace: {trace}
{extra}run: {{seed: 1}}
"""
# `simkv: error: <file>: <field>: <problem>` then the fix (on its own line, or after "; ")
ERROR = re.compile(r"^simkv: error: (?P<file>[^\n]+?): (?P<field>[^:\n]+): (?P<problem>[^\n]+?)(\n  |; )fix: \S")


def _run(tmp_path, name: str, content: bytes | str | None, columns=CSV_COLS, extra: str = "", **trace):
    """`simkv run` a small scenario replaying the file `name` (written unless content is None)."""
    if content is not None:
        (tmp_path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    spec = {"path": name, "columns": columns, **trace}
    (tmp_path / "s.yaml").write_text(SCENARIO.format(trace=json.dumps(spec), extra=extra))
    start = time.perf_counter()
    proc = run_cli("run", tmp_path / "s.yaml", "-q", "--no-figures", "-o", tmp_path / "out", timeout=30)
    proc.wall_s = time.perf_counter() - start
    return proc


def _assert_trace_error(proc, name: str, *needles: str, line: int | None = None):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    match = ERROR.match(proc.stderr)
    assert match, proc.stderr
    assert match["file"].endswith(name), proc.stderr          # the trace file, not only the scenario
    if line is not None:
        assert match["field"].startswith(f"line {line}"), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert proc.wall_s < 15


JL = {"arrival": "t", "prompt": "p", "output": "o"}
ROW = '{"t": 0, "p": 100, "o": 20}\n'
BIG = str(2 ** 63)

# name: (file name, content, columns, needles, line)
BAD = {
    # mapped columns that do not exist
    "csv session column missing": ("t.csv", "t,p,o\n0,5,3\n", {**CSV_COLS, "session": "conv"}, ["no column 'conv'"], None),
    "csv block_ids column missing": ("t.csv", "t,p,o\n0,5,3\n", {**CSV_COLS, "block_ids": "ids"}, ["no column 'ids'"], None),
    "csv prompt column missing": ("t.csv", "t,q,o\n0,5,3\n", CSV_COLS, ["no column 'p'"], None),
    "jsonl session key missing": ("t.jsonl", ROW, {**JL, "session": "conv"}, ["no column 'conv'"], 1),
    "csv duplicate mapped column": ("t.csv", "t,p,o,p\n0,5,3,6\n", CSV_COLS, ["'p' appears 2 times"], None),
    # token counts
    "fractional count csv": ("t.csv", "t,p,o\n0,5,3\n1,1.5,3\n", CSV_COLS, ["not a whole number"], 3),
    "fractional count jsonl": ("t.jsonl", ROW + '{"t": 1, "p": 100.5, "o": 20}\n', JL, ["not a whole number"], 2),
    "json true as a count": ("t.jsonl", '{"t": 0, "p": true, "o": 20}\n', JL, ["true is not a number"], 1),
    "json null as a count": ("t.jsonl", '{"t": 0, "p": 100, "o": null}\n', JL, ["null is not a number"], 1),
    "json list as a count": ("t.jsonl", '{"t": 0, "p": [1], "o": 2}\n', JL, ["not a number"], 1),
    "inf count": ("t.csv", "t,p,o\n0,inf,3\n", CSV_COLS, ["not a finite number"], 2),
    "1e400 count": ("t.csv", "t,p,o\n0,1e400,3\n", CSV_COLS, ["not a finite number"], 2),
    "nan count": ("t.csv", "t,p,o\n0,5,nan\n", CSV_COLS, ["not a finite number"], 2),
    "count >= 2^63 csv": ("t.csv", f"t,p,o\n0,{BIG},3\n", CSV_COLS, ["out of range"], 2),
    "count >= 2^63 jsonl": ("t.jsonl", f'{{"t": 0, "p": {BIG}, "o": 20}}\n', JL, ["out of range"], 1),
    "count with 5000 digits": ("t.jsonl", '{"t": 0, "p": ' + "9" * 5000 + ', "o": 20}\n', JL, ["not valid JSON"], 1),
    "negative count": ("t.csv", "t,p,o\n0,-5,3\n", CSV_COLS, ["out of range", ">= 1"], 2),
    "zero count": ("t.csv", "t,p,o\n0,5,0\n", CSV_COLS, [">= 1"], 2),
    "empty count cell": ("t.csv", "t,p,o\n0,,3\n", CSV_COLS, ["not a number"], 2),
    # times
    "inf time": ("t.csv", "t,p,o\n0,5,3\ninf,5,3\n", CSV_COLS, ["not a finite number"], 3),
    "inf time inside a window": ("t.csv", "t,p,o\n0,5,3\ninf,5,3\n", CSV_COLS, ["not a finite number"], 3),
    "1e400 time": ("t.csv", "t,p,o\n1e400,5,3\n", CSV_COLS, ["not a finite number"], 2),
    "nan time": ("t.csv", "t,p,o\nnan,5,3\n", CSV_COLS, ["not a finite number"], 2),
    "time >= 2^63": ("t.jsonl", f'{{"t": {BIG}, "p": 100, "o": 20}}\n', JL, ["too large"], 1),
    "json NaN time": ("t.jsonl", '{"t": NaN, "p": 100, "o": 20}\n', JL, ["not valid JSON", "NaN"], 1),
    "json true time": ("t.jsonl", '{"t": true, "p": 100, "o": 20}\n', JL, ["true is not a number"], 1),
    "negative time": ("t.csv", "t,p,o\n-1,5,3\n", CSV_COLS, ["negative"], 2),
    # JSON Lines structure
    "duplicate json key": ("t.jsonl", ROW + '{"t": 1, "p": 100, "p": 7, "o": 20}\n', JL, ["'p' appears twice"], 2),
    "json array line": ("t.jsonl", ROW + "[1, 2, 3]\n", JL, ["an array, not a JSON object"], 2),
    "json number line": ("t.jsonl", ROW + "\n5\n", JL, ["a number, not a JSON object"], 3),
    "json string line": ("t.jsonl", '"hello"\n', JL, ["a string, not a JSON object"], 1),
    "json null line": ("t.jsonl", ROW + "null\n", JL, ["null, not a JSON object"], 2),
    "json syntax error": ("t.jsonl", ROW + '{"t": 1, "p": \n', JL, ["not JSON"], 2),
    "json deep nesting": ("t.jsonl", "[" * 100000 + "]" * 100000 + "\n", JL, ["not valid JSON"], 1),
    # CSV structure
    "csv row with an extra field": ("t.csv", "t,p,o\n0,5,3,9\n", CSV_COLS, ["4 fields, the header has 3"], 2),
    "csv row with a missing field": ("t.csv", "t,p,o\n0,5,3\n1,5\n", CSV_COLS, ["2 fields, the header has 3"], 3),
    "csv field over the size limit": ("t.csv", "t,p,o,note\n0,5,3," + "x" * 200_000 + "\n", CSV_COLS,
                                      ["not valid CSV", "field larger than field limit"], 2),
    "csv unterminated quote": ("t.csv", 't,p,o\n0,5,"3\n', CSV_COLS, ["not valid CSV"], None),
    # encodings and compression
    "latin-1 file": ("t.csv", "t,p,o,note\n0,5,3,café\n".encode("latin-1"), CSV_COLS, ["not UTF-8", "0xe9"], 2),
    "utf-16 file": ("t.csv", "t,p,o\n0,5,3\n".encode("utf-16"), CSV_COLS, ["UTF-16"], 1),
    "binary file": ("t.csv", bytes(range(255, -1, -1)) * 8, CSV_COLS, ["not UTF-8"], 1),
    "truncated gzip": ("t.csv.gz", gzip.compress(("t,p,o\n" + "0,5,3\n" * 2000).encode())[:-40], CSV_COLS,
                       ["gzip data is truncated or corrupt"], None),
    "invalid gzip": ("t.csv.gz", b"\x1f\x8b" + b"not really gzip" * 10, CSV_COLS, ["gzip data is truncated or corrupt"], 1),
    "plain text named .gz": ("t.csv.gz", "t,p,o\n0,5,3\n", CSV_COLS, ["not gzip data"], None),
    # block ids
    "block ids not a list": ("t.jsonl", '{"t": 0, "p": 100, "o": 2, "b": 7}\n', {**JL, "block_ids": "b"},
                             ["not a list of block ids"], 1),
    "block ids with a string": ("t.jsonl", '{"t": 0, "p": 1000, "o": 2, "b": [1, "x"]}\n', {**JL, "block_ids": "b"},
                                ['"x" is not a block id'], 1),
    "block ids with a bool": ("t.jsonl", '{"t": 0, "p": 1000, "o": 2, "b": [true]}\n', {**JL, "block_ids": "b"},
                              ["true is not a block id"], 1),
    "negative block id": ("t.jsonl", '{"t": 0, "p": 100, "o": 2, "b": [-1]}\n', {**JL, "block_ids": "b"},
                          ["-1 is not a block id"], 1),
    "huge block id": ("t.jsonl", '{"t": 0, "p": 100, "o": 2, "b": [' + str(2 ** 64) + "]}\n", {**JL, "block_ids": "b"},
                      ["is not a block id"], 1),
    "more block ids than the prompt fills": ("t.jsonl", '{"t": 0, "p": 600, "o": 2, "b": [1, 2, 3]}\n',
                                             {**JL, "block_ids": "b"}, ["3 block ids of 512 tokens"], 1),
    "csv block ids bad json": ("t.csv", 't,p,o,b\n0,600,3,"[1, 2"\n', {**CSV_COLS, "block_ids": "b"},
                               ["not a list of block ids"], 2),
    "csv block ids junk": ("t.csv", "t,p,o,b\n0,600,3,1 two\n", {**CSV_COLS, "block_ids": "b"},
                           ["not a list of block ids"], 2),
    # sessions
    "null session id": ("t.jsonl", '{"t": 0, "p": 100, "o": 2, "c": null}\n', {**JL, "session": "c"},
                        ["not a conversation id"], 1),
    "empty session id": ("t.csv", "t,p,o,c\n0,5,3,\n", {**CSV_COLS, "session": "c"}, ["not a conversation id"], 2),
    # empty files
    "empty csv": ("t.csv", "", CSV_COLS, ["empty"], None),
    "empty jsonl": ("t.jsonl", "", JL, ["no requests"], None),
    "blank-lines jsonl": ("t.jsonl", "\n  \n\n", JL, ["no requests"], None),
    "header only": ("t.csv", "t,p,o\n", CSV_COLS, ["no requests"], None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_trace_is_one_clear_error(tmp_path, case):
    name, content, columns, needles, line = BAD[case]
    window = {"window_s": [0, 100]} if "window" in case else {}
    _assert_trace_error(_run(tmp_path, name, content, columns, **window), name, *needles, line=line)


def test_trace_path_that_is_not_a_regular_file_fails_at_once(tmp_path):
    (tmp_path / "folder").mkdir()
    _assert_trace_error(_run(tmp_path, "folder", None), "folder", "is a folder")
    os.mkfifo(tmp_path / "fifo.csv")                       # opening it would block forever
    _assert_trace_error(_run(tmp_path, "fifo.csv", None), "fifo.csv", "not a regular file")
    _assert_trace_error(_run(tmp_path, "/dev/zero", None), "/dev/zero", "not a regular file")   # endless
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    _assert_trace_error(_run(tmp_path, "loop_a", None), "loop_a", "symbolic link loop")
    os.symlink(tmp_path / "gone.csv", tmp_path / "dangling.csv")
    _assert_trace_error(_run(tmp_path, "dangling.csv", None), "dangling.csv", "trace file not found")


def test_a_utf8_byte_order_mark_is_dropped(tmp_path):
    """Spreadsheet exports start with a BOM; without dropping it the header's first name would be
    '\\ufefft' and never match. The BOM'd file reads exactly like the plain one."""
    text = "t,p,o\n0,100,20\n1.5,50,5\n"
    (tmp_path / "plain.csv").write_text(text)
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (ROW + '{"t": 1.5, "p": 50, "o": 5}\n').encode())
    (tmp_path / "bom.csv.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + text.encode()))
    for name, cols in (("bom.csv", CSV_COLS), ("bom.jsonl", JL), ("bom.csv.gz", CSV_COLS)):
        data = read_trace(TraceSpec(path=name, columns=cols), tmp_path)
        assert data.arrival_s.tolist() == [0.0, 1.5]
        assert data.prompt_tokens.tolist() == [100, 50] and data.output_tokens.tolist() == [20, 5]
    proc = _run(tmp_path, "bom.csv", None)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["requests"]["completed"] == 2


def test_whole_valued_floats_and_gzip_without_suffix_are_read(tmp_path):
    """A count written 100.0 (a pandas export) is 100; gzip data is recognised by its magic bytes."""
    (tmp_path / "f.jsonl").write_text('{"t": 0, "p": 100.0, "o": 20}\n{"t": 2, "p": "7", "o": 3.0}\n')
    data = read_trace(TraceSpec(path="f.jsonl", columns=JL), tmp_path)
    assert data.prompt_tokens.tolist() == [100, 7] and data.output_tokens.tolist() == [20, 3]
    (tmp_path / "z.csv").write_bytes(gzip.compress(b"t,p,o\n0,5,3\n"))
    assert read_trace(TraceSpec(path="z.csv", columns=CSV_COLS), tmp_path).prompt_tokens.tolist() == [5]


def test_crlf_and_cr_line_endings_read_like_newlines(tmp_path):
    for name, sep in (("crlf.csv", "\r\n"), ("cr.csv", "\r")):
        (tmp_path / name).write_bytes(sep.join(["t,p,o", "0,100,20", "1.5,50,5", "oops"]).encode())
        with pytest.raises(SimkvError, match="1 fields, the header has 3") as err:
            read_trace(TraceSpec(path=name, columns=CSV_COLS), tmp_path)
        assert err.value.field == "line 4"                  # lines counted as a text editor shows them
        (tmp_path / name).write_bytes(sep.join(["t,p,o", "0,100,20", "1.5,50,5", ""]).encode())
        data = read_trace(TraceSpec(path=name, columns=CSV_COLS), tmp_path)
        assert data.arrival_s.tolist() == [0.0, 1.5] and data.prompt_tokens.tolist() == [100, 50]


# ---------------------------------------------------------------- parallel sampling over a trace

TRACE = "t,p,o\n0,100,20\n0.5,50,5\n2.0,70,9\n"


def test_parallel_sampling_over_a_trace_replays_each_rows_output_length(tmp_path):
    """With a trace there is no output distribution: each of a request's n samples runs for the
    length the trace recorded for it (rule in docs/traces.md)."""
    (tmp_path / "t.csv").write_text(TRACE)
    sc = simkv.Scenario(**{"model": "llama3-8b", "hardware": {"gpu": "h100"},
                           "workload": {"trace": {"path": str(tmp_path / "t.csv"), "columns": CSV_COLS},
                                        "sampling": {"n": 3}, "max_new_tokens": {"policy": "exact"}},
                           "run": {"seed": 0}})
    stream = generate_stream(sc.workload, sc.run, read_trace(sc.workload.trace))
    assert stream.output_tokens.tolist() == [20, 20, 20, 5, 5, 5, 9, 9, 9]
    assert stream.prompt_tokens.tolist() == [100] * 3 + [50] * 3 + [70] * 3
    assert stream.arrival_s.tolist() == [0.0] * 3 + [0.5] * 3 + [2.0] * 3
    assert stream.group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    proc = _run(tmp_path, "t.csv", None, extra="  sampling: {n: 3}\n")
    assert proc.returncode == 0, proc.stderr
    requests = json.loads((tmp_path / "out" / "summary.json").read_text())["requests"]
    assert requests["completed"] == 3 and requests["sequences"] == 9


def test_parallel_sampling_over_a_lengths_only_trace(tmp_path):
    (tmp_path / "l.csv").write_text("p,o\n100,20\n50,5\n")
    cols = {"prompt": "p", "output": "o"}
    sc = simkv.Scenario(**{"model": "llama3-8b", "hardware": {"gpu": "h100"},
                           "workload": {"trace": {"path": str(tmp_path / "l.csv"), "columns": cols},
                                        "arrival": {"process": "poisson", "rate": 5}, "sampling": {"n": 2}},
                           "run": {"seed": 0, "num_requests": 40}})
    stream = generate_stream(sc.workload, sc.run, read_trace(sc.workload.trace))
    pairs = stream.prompt_tokens.reshape(-1, 2), stream.output_tokens.reshape(-1, 2)
    assert (pairs[0][:, 0] == pairs[0][:, 1]).all() and (pairs[1][:, 0] == pairs[1][:, 1]).all()
    assert set(zip(pairs[0][:, 0].tolist(), pairs[1][:, 0].tolist())) <= {(100, 20), (50, 5)}


def test_replay_options_that_leave_nothing_to_run_are_clear_errors(tmp_path):
    (tmp_path / "t.csv").write_text(TRACE)
    (tmp_path / "l.csv").write_text("p,o\n100,20\n")
    _assert_trace_error(_run(tmp_path, "l.csv", None, {"prompt": "p", "output": "o"}), "l.csv",
                        "workload.arrival", "no arrival times")
    _assert_trace_error(_run(tmp_path, "t.csv", None, window_s=[100, 200]), "t.csv",
                        "workload.trace.window_s", "no request of the trace")
    _assert_trace_error(_run(tmp_path, "t.csv", None, speed=1e-310), "t.csv", "workload.trace.speed", "overflow")


# ---------------------------------------------------------------- fuzz

def _valid_files() -> dict:
    csv_text = "t,p,o,conv,ids\n" + "".join(f"{i * 0.25},{600 + 37 * i},{1 + i},c{i % 3},\"[{i}, {i + 1}]\"\n"
                                            for i in range(12))
    jsonl_text = "".join(json.dumps({"t": i * 0.25, "p": 600 + 37 * i, "o": 1 + i, "conv": f"c{i % 3}",
                                     "ids": [i, i + 1]}) + "\n" for i in range(12))
    return {"f.csv": csv_text.encode(), "f.jsonl": jsonl_text.encode(), "f.csv.gz": gzip.compress(csv_text.encode())}


JUNK = [b"\x00", b"\xff", b"\xef\xbb\xbf", b",", b'"', b"\n", b"\r", b"[", b"{", b"}", b"-", b"1e400", b"nan",
        b"true", b"9" * 25, b"\xe9", b"\x1f\x8b", b'"t": 1, ', b"null"]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(4)
        pos = rng.randrange(len(buf) + 1)
        if kind == 0 and buf:                                   # flip a byte's bits
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:                                          # truncate
            del buf[pos:]
        elif kind == 2:                                          # insert junk
            buf[pos:pos] = rng.choice(JUNK)
        elif buf:                                                # delete a run of bytes
            del buf[pos:pos + rng.randint(1, 8)]
    return bytes(buf)


def test_fuzzed_traces_are_read_or_rejected_with_a_simkv_error(tmp_path):
    """Byte flips, truncation, inserted junk and deletions in valid CSV, JSON Lines and gzip
    traces: read_trace returns a checked trace or raises SimkvError naming the file and the
    line or field, with a fix — never another exception — and quickly."""
    rng = random.Random(20240611)
    cols = {"arrival": "t", "prompt": "p", "output": "o", "session": "conv", "block_ids": "ids"}
    start, outcomes = time.perf_counter(), {"ok": 0, "error": 0}
    for name, data in _valid_files().items():
        spec = TraceSpec(path=name, columns=cols)
        (tmp_path / name).write_bytes(data)
        assert read_trace(spec, tmp_path).num_requests == 12
        for _ in range(250):
            (tmp_path / name).write_bytes(_mutate(data, rng))
            try:
                trace = read_trace(spec, tmp_path)
            except SimkvError as err:
                assert err.file == str(tmp_path / name) and err.field and err.fix, err.render()
                assert "\n" not in err.message, err.render()
                outcomes["error"] += 1
                continue
            outcomes["ok"] += 1
            assert (trace.prompt_tokens >= 1).all() and (trace.output_tokens >= 1).all()
            assert np.isfinite(trace.arrival_s).all() and (np.diff(trace.arrival_s) >= 0).all()
            assert all(isinstance(i, int) and i >= 0 for ids in trace.block_ids for i in ids)
    assert outcomes["ok"] >= 10 and outcomes["error"] >= 100, outcomes
    assert time.perf_counter() - start < 10


def test_fuzzed_trace_through_the_cli(tmp_path):
    """A few mutated files through `simkv run`: exit 0, or exit 2 with one clear error."""
    rng = random.Random(7)
    cols = {"arrival": "t", "prompt": "p", "output": "o", "session": "conv", "block_ids": "ids"}
    for name, data in _valid_files().items():
        for _ in range(2):
            proc = _run(tmp_path, name, _mutate(data, rng), cols)
            assert "Traceback" not in proc.stderr, proc.stderr
            assert proc.returncode in (0, 2), proc.stderr
            if proc.returncode == 2:
                assert ERROR.match(proc.stderr), proc.stderr


def test_block_ids_up_to_2_63_name_blocks_as_small_ones_do(tmp_path):
    """Block ids may be any whole number below 2^63; the prefix cache's names must stay within
    int64, so large ids are renumbered (in order of first appearance): the same prefix sharing,
    so the same results as the trace written with small ids."""
    rng = random.Random(5)
    rows = []
    for i in range(40):
        shared = rng.randint(1, 3)
        ids = list(range(shared)) + [100 + 10 * i + j for j in range(rng.randint(0, 2))]
        rows.append({"t": 50 * i, "p": 512 * len(ids), "o": rng.randint(1, 40), "ids": ids})
    big = 2 ** 63 - 1000
    results = []
    for offset in (0, big):
        lines = [json.dumps({**r, "ids": [offset + b for b in r["ids"]]}) for r in rows]
        trace = f"t{offset}.jsonl"   # a file each (traces are cached by path)
        (tmp_path / trace).write_text("\n".join(lines) + "\n")
        (tmp_path / "s.yaml").write_text(SCENARIO.format(
            trace=json.dumps({"path": trace, "columns": {"arrival": "t", "prompt": "p", "output": "o",
                                                          "block_ids": "ids"}, "time_unit": "ms"}),
            extra="").replace("engine: {max_model_len: 4096}", "engine: {preset: vllm-v1, max_model_len: 4096}"))
        sc = simkv.load_scenario(str(tmp_path / "s.yaml"))
        res = simulate_all(sc)["base"]
        results.append((res.summary, {k: np.asarray(v).tolist() for k, v in res.requests.items()}))
    assert results[0][0]["kv_cache"]["prefix_cache"]["hit_rate"] > 0.3
    assert results[0] == results[1]


def test_a_trace_rewritten_in_the_same_process_is_read_again(tmp_path):
    """Traces are read once per process while the file is unchanged: a notebook that rewrites
    one between runs gets the new requests, not the cached old ones."""
    from simkv.simulate import stream_for
    prompts = []
    for p in (100, 300):
        (tmp_path / "t.jsonl").write_text(f'{{"t": 0, "p": {p}, "o": 2}}\n{{"t": 5, "p": {p}, "o": 2}}\n')
        (tmp_path / "s.yaml").write_text(SCENARIO.format(trace=json.dumps({"path": "t.jsonl", "columns": JL}), extra=""))
        prompts.append(stream_for(simkv.load_scenario(str(tmp_path / "s.yaml"))).prompt_tokens.tolist())
    assert prompts == [[100, 100], [300, 300]]
