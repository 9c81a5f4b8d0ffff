"""The compiled prefix cache (simkv.kv.compiled_prefix_cache on simkv.kv.pool_kernels) against the
pure-Python one it stands in for: operation by operation (the same block tables, free queue order,
names, counts and breakdown after every call, on hypothesis-drawn sequences of calls, as
tests/test_prefix_cache_queue.py checks the pure pool against the LRU dict it replaced), and whole
runs (summary and request table equal with SIMKV_COMPILED=0 and =1) on every engine that caches
prefixes."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import initialize

from simkv.kv.compiled_prefix_cache import CompiledPrefixCache, compiled_kernels, names_array, prefix_cache_allocator
from simkv.kv.name_runs import NameChain
from simkv.kv.prefix_cache import PrefixCachingAllocator
from simkv.sched.chunked import OWN, PREFIX, block_names
from test_prefix_cache_queue import TwinCaches

pytestmark = pytest.mark.skipif(compiled_kernels() is None, reason="numba is not installed")


class CompiledTwin(TwinCaches):
    """TwinCaches' calls, the compiled pool against the pure one."""

    @initialize(num_blocks=st.integers(2, 64), block_size=st.sampled_from([1, 4, 16]))
    def setup(self, num_blocks, block_size):
        self.new, self.ref = CompiledPrefixCache(num_blocks, block_size), PrefixCachingAllocator(num_blocks, block_size)
        self.ref.compact_slack = 0
        self.hashes = {}
        self.next_id = 0


CompiledTwin.TestCase.settings = settings(max_examples=50, stateful_step_count=50, deadline=None,
                                          suppress_health_check=[HealthCheck.filter_too_much])
TestCompiledEqualsPure = CompiledTwin.TestCase


def test_the_name_table_grows_and_keeps_every_name():
    """Past half load the table doubles (rehash); names evicted from a full pool leave it."""
    a = CompiledPrefixCache(5000, 1)
    for rid in range(3):
        names = block_names(OWN, rid, 0, 1500)
        a.allocate_cached(rid, names, 0, 1500, 1500)
        a.register(rid, names, 1500)
    assert len(a._tab) >= 4 * 4500 and len(a.cached_blocks()) == 4500
    assert all(a.block_of(h) == a.block_table(1)[i] for i, h in enumerate(block_names(OWN, 1, 0, 1500)))
    for rid in range(3):
        a.free(rid)
    a.allocate_cached(9, [], 0, 5000, 5000)   # takes every block: every name is evicted
    assert a.cached_blocks() == {} and a._named == 0 and not (a._tab[0::2] >= 0).any()


def test_names_array_of_each_kind():
    chain = NameChain((block_names(PREFIX, 2, 0, 3), block_names(OWN, 7, 3, 5)))
    assert names_array(chain).tolist() == list(chain) and names_array(chain) is names_array(chain)
    assert names_array(block_names(OWN, 1, 2, 6)).tolist() == list(block_names(OWN, 1, 2, 6))
    assert names_array([5, 9]).dtype == np.int64 and names_array([]).size == 0


def test_the_factory_follows_the_run_length_and_the_switch(monkeypatch):
    """Compiled from COMPILED_FROM_REQUESTS requests on (numba's start-up then pays), in any run once
    numba is loaded, or when forced (simkv.compiled)."""
    import sys
    from simkv.compiled import COMPILED_FROM_REQUESTS
    monkeypatch.delenv("SIMKV_COMPILED", raising=False)
    assert type(prefix_cache_allocator(8, 4, COMPILED_FROM_REQUESTS)) is CompiledPrefixCache
    assert type(prefix_cache_allocator(8, 4, 10)) is CompiledPrefixCache   # numba loaded: a short run uses it too
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "numba")   # as in a new process (no numba code runs meanwhile)
        assert type(prefix_cache_allocator(8, 4, COMPILED_FROM_REQUESTS - 1)) is PrefixCachingAllocator
    monkeypatch.setenv("SIMKV_COMPILED", "1")
    assert type(prefix_cache_allocator(8, 4, 10)) is CompiledPrefixCache
    monkeypatch.setenv("SIMKV_COMPILED", "0")
    assert type(prefix_cache_allocator(8, 4, 10**6)) is PrefixCachingAllocator


def test_a_copy_is_independent():
    import copy
    a = CompiledPrefixCache(16, 4)
    a.allocate_cached(0, block_names(OWN, 0, 0, 3), 0, 12, 12)
    b = copy.deepcopy(a)
    b.free(0)
    assert a.ref_count(a.block_table(0)[0]) == 1 and b.num_free_blocks == 16
    assert sorted(b.free_block_ids()) == list(range(16)) and a.num_free_blocks == 13
    assert b._ref.base is b._st or b._ref.base is b._st.base   # the copy's views are of its own state


# ------------------------------------------------------------ whole runs
import contextlib  # noqa: E402
import os  # noqa: E402

import simkv  # noqa: E402
from hypothesis import given  # noqa: E402
from simkv.presets import PRESETS  # noqa: E402
from test_step_grouping import SESSIONS, _assert_same, _scenario  # noqa: E402


@contextlib.contextmanager
def pool(switch: str):
    """Every prefix cache built inside is the compiled one (switch "1") or the pure one ("0")."""
    old = os.environ.get("SIMKV_COMPILED")
    os.environ["SIMKV_COMPILED"] = switch
    try:
        yield
    finally:
        if old is None:
            del os.environ["SIMKV_COMPILED"]
        else:
            os.environ["SIMKV_COMPILED"] = old


def _same_both_ways(scenario, variant=None):
    with pool("1"):
        compiled = simkv.simulate(scenario, variant)
    with pool("0"):
        pure = simkv.simulate(scenario, variant)
    _assert_same(compiled, pure)
    return compiled


SHARED = {"shared_prefix": {"fraction": 0.7, "tokens": 512, "num_prefixes": 3}}


CACHING = ["vllm-v1", "tgi", "sarathi-serve", "sglang", "trtllm"]   # the presets that can cache prefixes


def test_the_caching_presets_are_every_one_that_can():
    from simkv.simulate import build_simulation
    from simkv.errors import SimkvError
    from simkv.workload.stream import generate_stream
    can = []
    for preset in sorted(PRESETS):
        sc = _scenario(engine={"preset": preset, "prefix_caching": True})
        try:
            build_simulation(sc, generate_stream(sc.workload, sc.run))
        except SimkvError:
            continue
        can.append(preset)
    assert sorted(CACHING) == can


@pytest.mark.parametrize("preset", CACHING)
def test_every_caching_preset_with_sessions_and_prefixes_runs_the_same(preset):
    """Multi-turn histories and shared prefixes, little memory (evictions, preemptions): the same
    run, bit for bit, on the compiled pool and on the pure one."""
    engine = {"preset": preset, "prefix_caching": True, "gpu_memory_utilization": 0.22}
    res = _same_both_ways(_scenario(engine=engine, workload={"sessions": SESSIONS}))
    _same_both_ways(_scenario(engine=engine, workload=SHARED))
    assert res.summary["requests"]["completed"] > 0


@pytest.mark.parametrize("sampling", [{"n": 3}, {"beam_width": 3, "beam_reselect": 0.4}])
def test_parallel_sampling_and_beams_run_the_same(sampling):
    """Sequences of one request share their prompt's blocks; beams fork (copy-on-write)."""
    _same_both_ways(_scenario(engine={"preset": "vllm-v0"}, workload={"sampling": sampling, **SHARED}))


def test_shipped_scenarios_and_a_fleet_run_the_same():
    for path, variant in [("scenarios/vllm-vs-tgi-h100.yaml", "tgi"), ("scenarios/kv-offload-multiturn-h100.yaml", "no-offload"),
                          ("scenarios/fleet-routing-h100.yaml", "kv_aware")]:
        _same_both_ways(simkv.load_scenario(path, ["run.num_requests=100", "run.duration_s=null", "run.warmup_s=1"]), variant)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(preset=st.sampled_from(CACHING), memory=st.floats(0.22, 0.5), rate=st.floats(2.0, 80.0),
       prompt=st.integers(50, 1500), output=st.integers(2, 300), seqs=st.integers(2, 64),
       sessions=st.booleans(), seed=st.integers(0, 1000))
def test_generated_scenarios_run_the_same(preset, memory, rate, prompt, output, seqs, sessions, seed):
    workload = {"arrival": {"process": "poisson", "rate": rate},
                "prompt_tokens": {"dist": "exponential", "mean": prompt, "max": 3000},
                "output_tokens": {"dist": "exponential", "mean": output, "max": 600},
                **({"sessions": SESSIONS} if sessions else SHARED)}
    _same_both_ways(_scenario(engine={"preset": preset, "prefix_caching": True, "gpu_memory_utilization": memory,
                                      "max_num_seqs": seqs},
                              workload=workload, run={"seed": seed, "num_requests": 40, "warmup_s": 0.2}))


def test_kernels_that_cannot_be_set_up_leave_the_pure_pool(monkeypatch):
    """numba raises RuntimeError at import where it has no writable cache location: the run goes on
    on the pure pool (the same results), it does not fail."""
    from simkv import compiled

    def broken(name):
        raise RuntimeError("cannot cache function: no locator available")
    import types
    monkeypatch.setattr(compiled, "importlib", types.SimpleNamespace(import_module=broken))
    monkeypatch.setenv("SIMKV_COMPILED", "1")
    assert compiled.kernels("simkv.kv.pool_kernels") is None
    assert type(prefix_cache_allocator(8, 4, 10**6)) is PrefixCachingAllocator
