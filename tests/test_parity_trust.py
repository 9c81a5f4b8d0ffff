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


def _scheduler(prompts, outputs, *, budget, prefix_caching=False, blocks=4000, **kw):
    n = len(prompts)
    t = RequestTable.empty(n) if hasattr(RequestTable, "empty") else None
    if t is None:
        pytest.skip("RequestTable.empty missing")
    return t


def _table(prompts, outputs):
    from simkv.workload.stream import RequestStream
    n = len(prompts)
    stream = RequestStream(arrival_s=np.zeros(n), prompt_tokens=np.array(prompts, dtype=np.int64),
                           output_tokens=np.array(outputs, dtype=np.int64))
    return RequestTable.from_stream(stream)
