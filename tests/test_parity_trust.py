"""vLLM parity (issue 16): the harness's fake model output and simkv's chunk boundaries, checked
against vLLM V1's rules computed by hand here (no vLLM needed)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest

from simkv.kv.paged import PagedAllocator
from simkv.kv.prefix_cache import PrefixCachingAllocator
from simkv.request import RequestTable
from simkv.sched.chunked import ChunkedPrefillScheduler


# ------------------------------------------------------------------ harness: fake model output

@dataclass
class _Req:  # the fields of vllm.v1.request.Request that fake_output reads
    num_computed_tokens: int
    num_prompt_tokens: int
    num_output_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens


@dataclass
class _Out:
    num_scheduled_tokens: dict


def _fake_output_with_stub(monkeypatch, requests: dict, scheduled: dict):
    """Call parity.fake_output with a stand-in for vllm.v1.outputs.ModelRunnerOutput."""
    outputs = types.ModuleType("vllm.v1.outputs")

    @dataclass
    class ModelRunnerOutput:
        req_ids: list
        req_id_to_index: dict
        sampled_token_ids: list

    outputs.ModelRunnerOutput = ModelRunnerOutput
    for name in ("vllm", "vllm.v1"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.v1.outputs", outputs)
    from simkv.studies.parity import fake_output
    scheduler = types.SimpleNamespace(requests=requests)
    out = fake_output(_Out(scheduled), scheduler)
    return dict(zip(out.req_ids, out.sampled_token_ids))


def test_fake_output_samples_nothing_for_a_partial_chunk(monkeypatch):
    """vLLM's schedule() advances num_computed_tokens before the model runs (_update_after_schedule)
    and update_from_output appends every token it is given, so the fake output must sample only
    where the step reached the end of the known tokens. The old rule added the step's tokens a
    second time and sampled a token after a partial chunk: vLLM's request then grew by one token,
    and its last chunk was one token longer than simkv's (the 99+1930 vs 100+1929 divergence)."""
    requests = {
        "a": _Req(num_computed_tokens=282, num_prompt_tokens=381),   # chunk 0..282 of 381 just scheduled
        "b": _Req(num_computed_tokens=381, num_prompt_tokens=381),   # last chunk: prefill complete
        "c": _Req(num_computed_tokens=390, num_prompt_tokens=381, num_output_tokens=9),  # a decode
        "d": _Req(num_computed_tokens=400, num_prompt_tokens=381, num_output_tokens=30),  # resumed: recomputing
    }
    sampled = _fake_output_with_stub(monkeypatch, requests, {"a": 282, "b": 99, "c": 1, "d": 400})
    assert sampled == {"a": [], "b": [7], "c": [7], "d": []}


# ------------------------------------------------------------------ simkv's chunks vs vLLM's rule

def vllm_chunks(budget: int, running: list[tuple[int, int]], waiting: list[tuple[int, int]]) -> list[int]:
    """vLLM V1 Scheduler.schedule() token counts, for plenty of memory and no prefix hits:
    running requests in order get min(num_tokens - num_computed_tokens, budget), then waiting
    ones min(num_tokens - num_computed_tokens, budget); a request is (num_tokens, num_computed)."""
    out = []
    for num_tokens, computed in running + waiting:
        if budget <= 0:
            break
        n = min(num_tokens - computed, budget)
        out.append(n)
        budget -= n
    return out


def _table(prompts, outputs):
    n = len(prompts)
    out = np.array(outputs, dtype=np.int64)
    return RequestTable(np.zeros(n), np.array(prompts, dtype=np.int64), out, out.copy(), np.zeros(n, dtype=np.int8))


def _chunks(plan) -> list[int]:
    return [1] * len(plan.decode_ids) + plan.prefill_new.tolist()


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_chunk_boundaries_follow_vllms_rule(prefix_caching):
    """Budget 64: prompts of 100 and 50 tokens. Step 1: A's first chunk 64 (B gets nothing);
    step 2: A's rest 36 then B's first 28; step 3: A decodes (1), B's rest 22."""
    kv = (PrefixCachingAllocator if prefix_caching else PagedAllocator)(200, 16)
    s = ChunkedPrefillScheduler(_table([100, 50], [5, 5]), kv, max_num_seqs=8, max_num_batched_tokens=64,
                                max_model_len=512, prefix_caching=prefix_caching)
    s.add_request(0)
    s.add_request(1)
    expected = [vllm_chunks(64, [], [(100, 0), (50, 0)]),
                vllm_chunks(64, [(100, 64)], [(50, 0)]),
                vllm_chunks(64, [(101, 100), (50, 28)], [])]
    assert expected == [[64], [36, 28], [1, 22]]
    for step, want in enumerate(expected):
        plan = s.schedule()
        assert _chunks(plan) == want, step
        s.commit(plan, 0.01 * step, np.array([0.01]))


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_full_prompt_gate_admits_only_whole_prompts_that_fit(prefix_caching):
    """vLLM's scheduler_reserve_full_isl: with 10 free blocks of 16, a 200-token prompt (13 blocks)
    is not admitted although its first 64-token chunk (4 blocks) fits; without the gate it is."""
    for gate, admitted in ((False, [64]), (True, None)):
        kv = (PrefixCachingAllocator if prefix_caching else PagedAllocator)(10, 16)
        s = ChunkedPrefillScheduler(_table([200], [5]), kv, max_num_seqs=8, max_num_batched_tokens=64,
                                    max_model_len=512, prefix_caching=prefix_caching, full_prompt_must_fit=gate)
        s.add_request(0)
        if admitted is None:
            with pytest.raises(RuntimeError, match="never be admitted"):
                s.schedule()
        else:
            assert _chunks(s.schedule()) == admitted
    kv = PagedAllocator(13, 16)          # 13 blocks: the whole prompt fits, so the gate admits it
    s = ChunkedPrefillScheduler(_table([200], [5]), kv, max_num_seqs=8, max_num_batched_tokens=64,
                                max_model_len=512, full_prompt_must_fit=True)
    s.add_request(0)
    assert _chunks(s.schedule()) == [64]
