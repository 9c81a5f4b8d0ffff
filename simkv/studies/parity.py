"""Step-by-step parity with the real vLLM V1 scheduler (`make parity`, `python -m simkv.studies.parity`).

Runs vLLM's own `Scheduler` and `KVCacheManager`, unmodified, on the CPU beside simkv's vllm-v1
scheduler on the same request stream, and compares every step's decisions: which requests run,
how many tokens each, preemptions, prefix-cache hits. Needs the optional environment of
`scripts/parity-env.sh` (vLLM installed with --no-deps, a CPU torch); never needed by `make run`
or `make test` (nothing else in simkv imports this module).

The driver, in lock step: at virtual time t (advanced by simkv's calibrated step time, so arrivals
interleave as in a run) both schedulers receive the requests that arrived; each schedules a step;
the decisions are compared; simkv commits its plan, and vLLM gets a fake model output with one
sampled token for every request whose prefill completes in the step (as vLLM's own scheduler
tests do). Token ids are random, shared prefixes share ids, `ignore_eos=True` with `max_tokens` =
the request's output length. vLLM keeps one block of the pool as its null block, so simkv gets one
block fewer. Async scheduling is off (it changes decisions: a step is scheduled before the previous
one's tokens are known); simkv models the synchronous loop.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WORKLOADS = {
    "chat-poisson": {"arrival": {"process": "poisson", "rate": 20},
                     "prompt_tokens": {"dist": "lognormal", "mean": 600, "p99": 3000},
                     "output_tokens": {"dist": "exponential", "mean": 150, "max": 1024}},
    "prefix-heavy": {"arrival": {"process": "poisson", "rate": 20},
                     "prompt_tokens": {"dist": "lognormal", "mean": 300, "p99": 1500},
                     "output_tokens": {"dist": "exponential", "mean": 100, "max": 512},
                     "shared_prefix": {"fraction": 0.9, "tokens": 1024, "num_prefixes": 4}},
    "overload-preemption": {"arrival": {"process": "poisson", "rate": 80},
                            "prompt_tokens": {"dist": "lognormal", "mean": 800, "p99": 3000},
                            "output_tokens": {"dist": "exponential", "mean": 400, "max": 2048}},
}
BLOCKS = {"chat-poisson": 4000, "prefix-heavy": 3000, "overload-preemption": 1200}


def scenario_for(workload: str, num_requests: int, num_blocks: int):
    from simkv.scenario import Scenario
    return Scenario.model_validate({
        "name": f"parity-{workload}", "model": "llama3-8b", "hardware": {"gpu": "h100"},
        "engine": {"preset": "vllm-v1", "num_gpu_blocks": num_blocks - 1, "max_num_seqs": 128,
                   "max_num_batched_tokens": 2048, "max_model_len": 8192},
        "workload": WORKLOADS[workload], "run": {"seed": 0, "num_requests": num_requests}})


# ------------------------------------------------------------------ vLLM side

MODEL_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
                "num_key_value_heads": 8, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0, "vocab_size": 128256, "torch_dtype": "bfloat16",
                "bos_token_id": 128000, "eos_token_id": 128001}


def vllm_scheduler(folder: Path, *, num_blocks: int, block_size: int, max_num_seqs: int, max_batched: int,
                   max_model_len: int, prefix_caching: bool, async_scheduling: bool = False,
                   reserve_full_isl: bool = True):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec, KVCacheTensor
    from vllm.v1.structured_output import StructuredOutputManager
    (folder / "config.json").write_text(json.dumps(MODEL_CONFIG))
    model = ModelConfig(model=str(folder), skip_tokenizer_init=True, max_model_len=max_model_len, dtype="bfloat16")
    sched = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_batched,
                            max_model_len=max_model_len, enable_chunked_prefill=True,
                            async_scheduling=async_scheduling, is_encoder_decoder=False,
                            scheduler_reserve_full_isl=reserve_full_isl)
    cache = CacheConfig(block_size=block_size, gpu_memory_utilization=0.9, cache_dtype="auto",
                        enable_prefix_caching=prefix_caching)
    cache.num_gpu_blocks = num_blocks
    config = VllmConfig(model_config=model, scheduler_config=sched, cache_config=cache,
                        device_config=DeviceConfig(device="cpu"))
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=8, head_size=128, dtype=torch.bfloat16)
    kv = KVCacheConfig(num_blocks=num_blocks,
                       kv_cache_tensors=[KVCacheTensor(size=spec.page_size_bytes * num_blocks, layers=["layer.0"],
                                                       layer_stride=spec.page_size_bytes * num_blocks,
                                                       block_stride=spec.page_size_bytes)],
                       kv_cache_groups=[KVCacheGroupSpec(["layer.0"], spec)])
    return Scheduler(vllm_config=config, kv_cache_config=kv, structured_output_manager=StructuredOutputManager(config),
                     block_size=block_size)


def vllm_request(rid: int, tokens: list[int], max_tokens: int, block_size: int):
    from vllm.sampling_params import SamplingParams
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request
    from vllm.utils.hashing import sha256
    init_none_hash(sha256)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    return Request(request_id=str(rid), prompt_token_ids=tokens, sampling_params=params, pooling_params=None,
                   block_hasher=get_request_block_hasher(block_size, sha256))


def fake_output(sched_out, scheduler):
    from vllm.v1.outputs import ModelRunnerOutput
    ids = list(sched_out.num_scheduled_tokens)
    sampled = []
    for rid in ids:
        # schedule() has already advanced num_computed_tokens by this step's tokens (vLLM's
        # _update_after_schedule), so the step samples a token iff it reached the end of the
        # known tokens (prompt plus any output a resumed request recomputes); a partial chunk
        # samples none (update_from_output appends whatever it is given)
        req = scheduler.requests[rid]
        sampled.append([7] if req.num_computed_tokens >= req.num_tokens else [])
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled)


# ------------------------------------------------------------------ lock step

@dataclass
class StepDecision:
    tokens: dict[int, int]
    preempted: set[int]
    hits: dict[int, int] = field(default_factory=dict)   # newly scheduled request -> prefix-cache hit tokens


def simkv_decision(plan, hit_before: dict[int, int]) -> StepDecision:
    tokens = {int(r): 1 for r in plan.decode_ids}
    tokens.update({int(r): int(n) for r, n in zip(plan.prefill_ids, plan.prefill_new)})
    return StepDecision(tokens, {int(r) for r in plan.preempted_ids})


def compare(workload: str, num_requests: int = 150, max_steps: int = 20000, seed: int = 0,
            full_isl: bool = True) -> dict:
    """Lock-step comparison on one workload. `full_isl`: vLLM's admission gate
    `scheduler_reserve_full_isl` (its default, True) and simkv's `full_prompt_must_fit` alike;
    False compares vLLM with the gate off to the vllm-v1 preset as shipped (no gate)."""
    from simkv.simulate import build_simulation
    from simkv.workload.stream import generate_stream
    num_blocks = BLOCKS[workload]
    scenario = scenario_for(workload, num_requests, num_blocks)
    stream = generate_stream(scenario.workload, scenario.run, None)
    sim = build_simulation(scenario, stream)
    sim.scheduler.full_prompt_must_fit = full_isl
    e, t = sim.engine, sim.table
    rng = np.random.default_rng(seed)
    prefixes: dict[int, list[int]] = {}
    with tempfile.TemporaryDirectory() as folder:
        vs = vllm_scheduler(Path(folder), num_blocks=num_blocks, block_size=e.block_size,
                            max_num_seqs=sim.limits.max_num_seqs, max_batched=sim.limits.max_num_batched_tokens,
                            max_model_len=sim.limits.max_model_len, prefix_caching=e.prefix_caching,
                            reserve_full_isl=full_isl)
        order = np.argsort(t.arrival_s, kind="stable")
        nxt, now, steps, same, first = 0, 0.0, 0, 0, None
        while steps < max_steps:
            while nxt < len(order) and t.arrival_s[order[nxt]] <= now:
                rid = int(order[nxt])
                nxt += 1
                if t.reject_reason[rid]:
                    continue
                n = int(t.prompt_tokens[rid])
                k = int(t.prefix_tokens[rid]) if t.prefix_tokens is not None and t.prefix_id is not None \
                    and t.prefix_id[rid] >= 0 else 0
                if k:
                    pid = int(t.prefix_id[rid])
                    prefixes.setdefault(pid, rng.integers(0, 100000, k).tolist())
                tokens = (prefixes[int(t.prefix_id[rid])][:k] if k else []) + rng.integers(0, 100000, n - k).tolist()
                sim.scheduler.add_request(rid)
                vs.add_request(vllm_request(rid, tokens, int(t.output_tokens[rid]), e.block_size))
            plan = sim.scheduler.schedule()
            vout = vs.schedule()
            if plan is None and not vout.num_scheduled_tokens:
                if nxt >= len(order):
                    break
                now = float(t.arrival_s[order[nxt]])
                continue
            mine = simkv_decision(plan, {}) if plan is not None else StepDecision({}, set())
            theirs = StepDecision({int(r): int(n) for r, n in vout.num_scheduled_tokens.items()},
                                  {int(r) for r in (vout.preempted_req_ids or ())},
                                  {int(r.req_id): int(r.num_computed_tokens) for r in vout.scheduled_new_reqs})
            ok = mine.tokens == theirs.tokens and mine.preempted == theirs.preempted
            same += ok
            if not ok and first is None:
                first = {"step": steps, "time_s": now, "simkv": _show(mine), "vllm": _show(theirs)}
            dt = sim.cost.seconds(plan) if plan is not None else 1e-3
            if plan is not None:
                sim.scheduler.commit(plan, now, np.array([dt]))
            vs.update_from_output(vout, fake_output(vout, vs))
            now += dt
            steps += 1
    return {"workload": workload, "full_isl": full_isl, "steps": steps, "identical": same, "fraction": same / max(steps, 1),
            "first_divergence": first}


def _show(d: StepDecision) -> dict:
    diff = dict(sorted(d.tokens.items())[:40])
    return {"tokens": diff, "num_requests": len(d.tokens), "total_tokens": sum(d.tokens.values()),
            "preempted": sorted(d.preempted), "prefix_hits": d.hits}


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="simkv-parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=150)
    p.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    p.add_argument("-o", "--output", default="results/parity")
    args = p.parse_args(argv)
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("simkv: error: parity: vllm is not installed; fix: run scripts/parity-env.sh and use its python "
              "(`make parity` does)", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    # vLLM 0.33.0's default (full-prompt admission gate on, in both) and the gate off in both (the
    # vllm-v1 preset as shipped)
    modes = {"full_isl": True, "no_full_isl": False}
    results = {m: {w: compare(w, args.requests, full_isl=on) for w in (args.workload or WORKLOADS)}
               for m, on in modes.items()}
    summary = {m: {w: r["fraction"] for w, r in rs.items()} for m, rs in results.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "details.json").write_text(json.dumps(results, indent=1) + "\n")
    for m, rs in results.items():
        for w, r in rs.items():
            print(f"{m} {w}: {r['identical']}/{r['steps']} steps identical ({100 * r['fraction']:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
