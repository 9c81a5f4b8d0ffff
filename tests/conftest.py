"""Shared test helpers: small scenarios built in code, the CLI run in this process (`run_cli`),
and hypothesis profiles sized for CI.

The default suite must finish in minutes on a small CPU-only machine: torch (validation and
calibration run on the CPU with tiny shapes) gets at most two threads, and no more than its share of
the cores among pytest-xdist's workers, here and in every `simkv` subprocess (they inherit the
environment). Tests with real model shapes are marked `slow` and
run only when asked for (`make test-slow`, or `pytest -m slow`).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

# threads per test process: the cores shared among pytest-xdist's workers, at most two. Never more
# threads than cores in all: OpenMP and OpenBLAS threads spin while they wait, so two workers of two
# threads each on two cores made the torch tests ~3x slower (measured: two concurrent runs of the
# mini-engine tests, 46 s with two threads each against 15 s with one)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))   # set by xdist before this file loads
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
TORCH_THREADS = max(1, min(2, _CORES // _WORKERS))
# a value set here in pytest's controlling process (which loads this file first, without a worker
# count) is inherited by the workers: they replace it; a value the user set is kept
_INHERITED = os.environ.get("_SIMKV_TEST_THREADS")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    if _var not in os.environ or os.environ[_var] == _INHERITED:
        os.environ[_var] = str(TORCH_THREADS)
os.environ["_SIMKV_TEST_THREADS"] = str(TORCH_THREADS)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from simkv.scenario import Scenario  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _cap_torch_threads():
    """At most TORCH_THREADS torch threads in this process too (where a test imported torch)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() > TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
    yield


class CliTimeout(AssertionError):
    """`run_cli` ran past its timeout: the command hangs (or is far too slow)."""


def run_cli(*args, cwd: Path | str | None = ROOT, env: dict | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """`python -m simkv.cli ARGS`, run in this process: the same `simkv.cli.main`, its stdout and
    stderr captured and its exit status returned as a CompletedProcess, without a new interpreter
    importing simkv (~0.5 s a call, most of the suite's CLI tests' time). `env` replaces the
    environment and `cwd` the working directory for the call; both are restored after (the
    environment always, so nothing a command sets leaks into later tests). `timeout`
    (seconds) fails the test with CliTimeout if the command runs longer (where this is the main
    thread: SIGALRM). An exception `main` does not turn into an error message propagates, so a
    traceback fails the test. Python warnings go to the captured stderr where they are raised, with
    the filters a new interpreter starts with, as a real process would print them (pytest would
    otherwise collect them, and a warning before an error line would go unseen). Tests of the real
    entry point (determinism across processes, Ray, settings read at import) use `cli_process`."""
    from simkv import cli
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    alarm = timeout is not None and threading.current_thread() is threading.main_thread()

    def _expired(signum, frame):
        raise CliTimeout(f"simkv {' '.join(argv)} ran longer than {timeout} s")

    previous = signal.signal(signal.SIGALRM, _expired) if alarm else None
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, float(timeout))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            _process_warning_filters(err)
            try:
                code = cli.main(argv)
            except SystemExit as exc:   # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        os.chdir(saved_cwd)
        if os.environ != saved_env:
            os.environ.clear()
            os.environ.update(saved_env)
    return subprocess.CompletedProcess(["simkv", *argv], code, out.getvalue(), err.getvalue())


def cli_process(*args, cwd: Path | str | None = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m simkv.cli ARGS` in a new interpreter (nothing carried over from earlier tests)."""
    return subprocess.run([sys.executable, "-m", "simkv.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def _process_warning_filters(err: io.StringIO) -> None:
    """Inside catch_warnings: the warning filters of `python -m` without -W options, each warning
    written to `err` at once, formatted as Python prints it."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)

    def show(message, category, filename, lineno, file=None, line=None):
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


def small_scenario(**over) -> Scenario:
    """A tiny llama3-8b scenario with a small KV cache, so memory pressure is easy to reach."""
    raw = {
        "name": "test",
        "model": "llama3-8b",
        "hardware": {"gpu": "h100"},
        "engine": {"allocator": "paged", "block_size": 16, "num_gpu_blocks": 64, "max_num_seqs": 16,
                   "max_model_len": 512, "max_num_batched_tokens": 1024},
        "workload": {"arrival": {"process": "poisson", "rate": 50.0},
                     "prompt_tokens": {"dist": "uniform", "low": 10, "high": 200},
                     "output_tokens": {"dist": "uniform", "low": 1, "high": 150}},
        "run": {"seed": 3, "num_requests": 60},
    }
    for key, value in over.items():
        node = raw
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return Scenario(**raw)
