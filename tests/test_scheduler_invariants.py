"""Scheduler and engine invariants: every token generated exactly once, nothing leaked, limits
respected, the fast-forward path equal to stepping one step at a time."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from simkv.simulate import build_simulation
from simkv.kv import PagedAllocator, ContiguousAllocator
from simkv.kv.buddy import BuddyAllocator
from simkv.kv.offload import ON_EVICTION, WRITE_THROUGH, OffloadingPrefixCache, OffloadTiers, Tier
from simkv.kv.prefix_cache import PrefixCachingAllocator
from simkv.request import DONE, REJECTED, RequestTable
from simkv.sched.chunked import ChunkedPrefillScheduler
from simkv.sched.continuous import ContinuousBatchingScheduler
from simkv.sched.prefill_first import PrefillFirstScheduler
from simkv.sched.static import StaticBatchScheduler
from simkv.sched.tgi import TgiScheduler
from simkv.sched.sglang import SglangScheduler
from simkv.sched.trtllm import TrtllmScheduler
from simkv.simulate import run_simulation
from simkv.workload.stream import generate_stream

from conftest import small_scenario


def _table(prompts, outputs):
    """Requests with the given lengths; every other one starts with one of two shared prefixes."""
    n = len(prompts)
    prompts = np.array(prompts, dtype=np.int64)
    prefix_id = np.where(np.arange(n) % 2 == 0, np.arange(n) // 2 % 2, -1).astype(np.int64)
    prefix_tokens = np.where(prefix_id >= 0, np.minimum(prompts, 40), 0).astype(np.int64)
    return RequestTable(np.zeros(n), prompts, np.array(outputs, dtype=np.int64),
                        np.array(outputs, dtype=np.int64) * 2, np.zeros(n, dtype=np.int8), prefix_id, prefix_tokens)


POLICIES = ["fcfs-paged", "fcfs-contiguous", "fcfs-buddy", "chunked", "chunked-prefix", "prefill-first-swap", "prefill-first-recompute", "tgi",
            "tgi-chunked", "trtllm-no-evict-plain-chunked", "static", "sglang-fcfs", "sglang-lpm", "trtllm-no-evict", "trtllm-max-util", "trtllm-no-evict-chunked",
            # KV offload tiers below the prefix cache (simkv.kv.offload): small host and SSD tiers
            "chunked-prefix-offload", "sglang-offload-fcfs", "trtllm-offload-max-util"]


def _scheduler(policy, table, blocks, block_size, max_seqs, reservation, budget):
    """A scheduler and its allocator for `policy`, all sized for requests of <= 100 tokens."""
    kw = dict(max_num_seqs=max_seqs, max_repeat=7)
    if policy in ("fcfs-contiguous", "static"):
        kv = ContiguousAllocator(blocks * block_size)
    elif policy == "fcfs-buddy":
        kv = BuddyAllocator(blocks * block_size)
    elif "offload" in policy:
        tiers = [Tier("host", 3, 1e9, 1e9), Tier("ssd", 6, 1e8, 1e8)]
        policy_name = ON_EVICTION if policy.startswith("trtllm") else WRITE_THROUGH
        kv = OffloadingPrefixCache(blocks, block_size, OffloadTiers(tiers, policy_name, block_size, table.num_requests))
    elif policy == "trtllm-no-evict-plain-chunked":   # blocks reserved on the plain pool, chunks written into them
        kv = PagedAllocator(blocks, block_size, reserve_upfront=True)
    elif policy == "chunked-prefix" or policy.startswith(("sglang", "trtllm")):
        kv = PrefixCachingAllocator(blocks, block_size)
        kv.reserve_upfront = policy.startswith("trtllm-no-evict")
    else:
        kv = PagedAllocator(blocks, block_size, reserve_upfront=policy.startswith("tgi"))
    if policy.startswith("fcfs"):
        s = ContinuousBatchingScheduler(table, kv, max_num_batched_tokens=120, max_model_len=100,
                                        reservation=reservation, **kw)
    elif policy.startswith("chunked"):
        s = ChunkedPrefillScheduler(table, kv, max_num_batched_tokens=budget, max_model_len=100,
                                    prefix_caching=policy.startswith("chunked-prefix"), **kw)
    elif policy.startswith("prefill-first"):
        s = PrefillFirstScheduler(table, kv, max_num_batched_tokens=120, max_model_len=100,
                                  preemption=policy.rsplit("-", 1)[1], swap_capacity_tokens=150, **kw)
    elif policy.startswith("sglang"):
        budget = max(budget, block_size)   # a chunk below one page never progresses (SGLang aligns chunks to pages; the builder refuses it)
        s = SglangScheduler(table, kv, max_num_batched_tokens=budget, max_model_len=100,
                            schedule_policy=policy.rsplit("-", 1)[1], **kw)
    elif policy.startswith("trtllm"):
        s = TrtllmScheduler(table, kv, max_num_batched_tokens=max(budget, 100), max_model_len=100,
                            capacity_policy="guaranteed_no_evict" if "no-evict" in policy else "max_utilization",
                            chunking=policy.endswith("chunked"), prefix_caching="plain" not in policy, **kw)
    elif policy.startswith("tgi"):
        s = TgiScheduler(table, kv, max_batch_prefill_tokens=120, max_concurrent_requests=10_000,
                         chunking=policy == "tgi-chunked", **kw)
    else:
        s = StaticBatchScheduler(table, kv, max_num_batched_tokens=120, max_model_len=100, reservation=reservation, **kw)
    return s, kv


class SchedulerMachine(RuleBasedStateMachine):
    """Arrivals and steps in random order against every batching policy."""

    @initialize(policy=st.sampled_from(POLICIES), blocks=st.integers(8, 40), block_size=st.sampled_from([1, 4, 16]),
                max_seqs=st.integers(1, 8), reservation=st.sampled_from(["max_model_len", "pow2", "oracle", "prompt_plus_max_new"]),
                budget=st.integers(8, 120),
                lengths=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 40)), min_size=1, max_size=25))
    def setup(self, policy, blocks, block_size, max_seqs, reservation, budget, lengths):
        self.max_model_len = 100
        cap_blocks = max(blocks, -(-256 // block_size))  # the cache holds a pow2(100)=128 reservation
        prompts, outputs = zip(*lengths)
        self.t = _table(prompts, outputs)
        self.policy = policy
        self.s, self.kv = _scheduler(policy, self.t, cap_blocks, block_size, max_seqs, reservation, budget)
        self.arrived = 0
        self.now = 0.0
        self.emitted = np.zeros(len(prompts), dtype=np.int64)

    @rule()
    def arrive(self):
        if self.arrived < self.t.num_requests:
            self.s.add_request(self.arrived)
            self.arrived += 1

    @rule(dt=st.floats(0.001, 0.1))
    def step(self, dt):
        plan = self.s.schedule()
        if plan is None:
            assert not self.s.has_work()
            return
        assert plan.num_seqs <= self.s.max_num_seqs
        if not self.policy.startswith("tgi"):
            assert plan.num_batched_tokens <= self.s.max_num_batched_tokens
        if self.policy in ("tgi", "static") or self.policy.startswith("prefill-first"):
            assert not (len(plan.decode_ids) and len(plan.prefill_ids)), "this policy never mixes prefill and decode"
        if self.policy.startswith(("tgi", "trtllm-no-evict")):
            assert not plan.preempted_ids, "TGI and GUARANTEED_NO_EVICT never preempt"
        if self.policy.startswith("sglang"):
            assert not (len(plan.decode_ids) and len(plan.prefill_ids)), "SGLang runs prefill batches alone"
        assert len(set(plan.decode_ids.tolist()) | set(plan.prefill_ids.tolist())) == plan.num_seqs
        k = plan.max_steps
        out = self.s.commit(plan, self.now, np.full(k, dt))
        self.now += k * dt
        for rid in plan.decode_ids.tolist():
            self.emitted[rid] += k
        done = plan.prefill_done if len(plan.prefill_done) else np.ones(len(plan.prefill_ids), bool)
        for rid in plan.prefill_ids[done].tolist():
            self.emitted[rid] += 1
        note(f"plan k={k} decodes={len(plan.decode_ids)} prefills={len(plan.prefill_ids)} preempted={plan.preempted_ids}")
        if not out.finished_ids and not self.s.batch.deferred:
            u = self.kv.usage(self.s.next_reservation())
            got = tuple(int(c[-1]) for c in out.kv)
            assert got == (u.token_tokens, u.reserved_tokens, u.internal_frag_tokens, u.external_frag_tokens,
                           u.free_tokens), "vectorised breakdown disagrees with the allocator"

    @invariant()
    def batch_mirrors_allocator(self):
        if not hasattr(self, "s"):
            return
        b = self.s.batch
        for rid, kv in zip(b.ids.tolist(), b.kv.tolist()):
            assert self.kv.tokens_of(rid) == kv
        for rid, p in b.prefilling.items():
            assert self.kv.tokens_of(rid) == p.computed
        held = set(self.kv.owners() if isinstance(self.kv, PagedAllocator) else self.kv.regions())  # noqa: E501
        expected = set(b.ids.tolist()) | set(b.prefilling) | set(b.deferred)
        assert held == expected, "allocator and batch disagree on who holds memory"
        if isinstance(self.kv, PagedAllocator):   # every block is owned or free, and counted once
            owned = {blk for table in self.kv.owners().values() for blk in table}
            assert len(owned) + self.kv.num_free_blocks == self.kv.num_blocks, "blocks counted free twice, or lost"
        assert len(b) <= self.s.max_num_seqs

    @invariant()
    def tokens_generated_exactly_once(self):
        if not hasattr(self, "s"):
            return
        assert (self.emitted <= self.t.output_tokens).all(), "a request got more tokens than its output"
        for rid, g in zip(self.s.batch.ids.tolist(), self.s.batch.gen.tolist()):
            assert self.emitted[rid] == g
        done = self.t.status == DONE
        assert (self.emitted[done] == self.t.output_tokens[done]).all()

    def teardown(self):
        if not hasattr(self, "s"):
            return
        while self.arrived < self.t.num_requests:
            self.arrive()
        for _ in range(100_000):
            plan = self.s.schedule()
            if plan is None:
                break
            self.s.commit(plan, self.now, np.full(plan.max_steps, 0.01))
        assert (self.t.status == DONE).all(), "a request never finished"
        assert (self.t.generated == self.t.output_tokens).all()
        u = self.kv.usage()
        owned = self.kv.owners() if isinstance(self.kv, PagedAllocator) else self.kv.regions()
        assert u.held_tokens == 0 and not owned, "KV memory leaked after every request finished"
        assert u.free_tokens + u.external_frag_tokens == u.capacity_tokens  # an empty buddy space may stay split


SchedulerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestScheduler = SchedulerMachine.TestCase


def _run(scenario, max_repeat=None):
    stream = generate_stream(scenario.workload, scenario.run)
    sim = build_simulation(scenario, stream)
    if max_repeat is not None:
        sim.scheduler.max_repeat = max_repeat
    return sim, run_simulation(sim, "base")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.floats(5, 400), blocks=st.integers(32, 200),
       allocator=st.sampled_from(["paged", "contiguous"]),
       reservation=st.sampled_from(["max_model_len", "pow2", "oracle", "prompt_plus_max_new"]))
def test_simulation_finishes_every_request_once(seed, rate, blocks, allocator, reservation):
    sc = small_scenario(run__seed=seed, workload__arrival={"process": "poisson", "rate": rate},
                        engine__num_gpu_blocks=blocks, engine__allocator=allocator, engine__reservation=reservation)
    sim, res = _run(sc)
    t = sim.table
    ok = t.status != REJECTED
    assert (t.status[ok] == DONE).all()
    assert (t.generated[ok] == t.output_tokens[ok]).all(), "a token was generated twice or never"
    assert res.summary["throughput"]["total_output_tokens"] == int(t.output_tokens[ok].sum())
    assert sim.allocator.usage().free_tokens == sim.allocator.capacity_tokens, "memory leaked"
    assert (t.first_token_s[ok] >= t.arrival_s[ok]).all()
    assert (t.finish_s[ok] >= t.first_token_s[ok]).all()
    assert (t.first_scheduled_s[ok] >= t.arrival_s[ok]).all()
    kv = res.summary["kv_cache"]["mean_fraction"]
    assert sum(kv.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("allocator", ["paged", "contiguous"])
def test_fast_forward_equals_single_steps(allocator):
    sc = small_scenario(engine__allocator=allocator, run__num_requests=120,
                        workload__arrival={"process": "poisson", "rate": 20.0})
    sim1, fast = _run(sc)
    sim2, slow = _run(sc, max_repeat=1)
    assert fast.summary["batch"]["steps"] == slow.summary["batch"]["steps"]
    for col in ("first_token_s", "finish_s", "first_scheduled_s"):
        np.testing.assert_allclose(getattr(sim1.table, col), getattr(sim2.table, col), rtol=1e-9)
    np.testing.assert_array_equal(sim1.table.num_preemptions, sim2.table.num_preemptions)
    for key in ("token", "reserved", "internal_frag", "external_frag", "free"):
        assert fast.summary["kv_cache"]["mean_fraction"][key] == pytest.approx(
            slow.summary["kv_cache"]["mean_fraction"][key], rel=1e-9, abs=1e-12)


def test_memory_pressure_preempts_newest_and_recomputes():
    sc = small_scenario(engine__num_gpu_blocks=40, run__num_requests=80,
                        workload__output_tokens={"dist": "uniform", "low": 100, "high": 300})
    sim, res = _run(sc)
    assert res.summary["requests"]["preemptions"] > 0
    t = sim.table
    assert (t.generated[t.status == DONE] == t.output_tokens[t.status == DONE]).all()
    # a preempted request's longest gap includes its time out of the batch
    pre = t.num_preemptions > 0
    assert (t.tbt_max_s[pre] > np.median(t.tbt_max_s[~pre & (t.output_tokens > 1)])).all()


def test_preemption_victim_is_newest():
    t = _table([16, 16, 16], [40, 40, 40])
    kv = PagedAllocator(5, 16)
    s = ContinuousBatchingScheduler(t, kv, max_num_seqs=8, max_num_batched_tokens=100, max_model_len=100)
    for rid in range(3):
        s.add_request(rid)
    plan = s.schedule()
    assert plan.prefill_ids.tolist() == [0, 1, 2]
    s.commit(plan, 0.0, np.array([0.01]))
    # each holds one full block; growing all three needs 3 more blocks, only 2 free
    plan = s.schedule()
    assert plan.preempted_ids == (2,)
    assert list(s.waiting) == [2]
    assert plan.decode_ids.tolist() == [0, 1]
    assert len(plan.prefill_ids) == 0, "no admission in a step that preempted"


def test_head_of_line_blocking():
    """FCFS: a request that does not fit blocks smaller ones behind it."""
    t = _table([10, 90, 5], [5, 5, 5])
    kv = ContiguousAllocator(100)
    s = ContinuousBatchingScheduler(t, kv, max_num_seqs=8, max_num_batched_tokens=200, max_model_len=100,
                                    reservation="oracle")
    for rid in range(3):
        s.add_request(rid)
    plan = s.schedule()
    assert plan.prefill_ids.tolist() == [0]      # 14 slots; request 1 needs 94 of the 86 left
    assert list(s.waiting) == [1, 2]             # request 2 (9 slots) would fit but waits its turn
    assert s.next_reservation() == 94
