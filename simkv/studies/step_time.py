"""`simkv.cost.step_time`: the calibrated (or roofline) time of one engine step, by shape."""

from __future__ import annotations

import numpy as np

from simkv.sched.base import StepPlan


def plan_from_shape(prefill_seqs: int, prefill_len: int, decode_batch: int, decode_ctx: int,
                    tokens_per_seq: int = 1) -> StepPlan:
    """The StepPlan of `prefill_seqs` whole prompts of `prefill_len` tokens plus `decode_batch`
    decodes at context `decode_ctx` (the calibration tables' step shapes), each decode computing
    `tokens_per_seq` tokens (speculative verification of tokens_per_seq - 1 proposals; 1 = decode)."""
    new = np.full(prefill_seqs, prefill_len, dtype=np.int64)
    return StepPlan(decode_ids=np.arange(decode_batch), decode_ctx=np.full(decode_batch, decode_ctx, dtype=np.int64),
                    prefill_ids=np.arange(decode_batch, decode_batch + prefill_seqs), prefill_new=new,
                    prefill_ctx=new.copy(), decode_tokens=tokens_per_seq)


def cost_model(gpu: str = "h100", model: str = "llama3-8b", *, tensor_parallel: int = 1, dtype: str = "bf16",
               layers: int | None = None, cost: str = "calibrated", host_overhead_s: float = 0.0,
               gpus: dict | None = None):
    """A step-time model for a catalog GPU and model (layers overrides the model's layer count;
    `gpus` adds user GPU entries by name, e.g. one written by `simkv calibrate`)."""
    from simkv.simulate import make_cost
    from simkv.scenario import Scenario
    raw = {"model": model, "hardware": {"gpu": gpu, "tensor_parallel": tensor_parallel}, "cost": cost,
           "engine": {"weight_dtype": dtype, "host_overhead_s": host_overhead_s},
           "workload": {"arrival": {"process": "poisson", "rate": 1},
                        "prompt_tokens": {"dist": "fixed", "value": 1}, "output_tokens": {"dist": "fixed", "value": 1}},
           "run": {"num_requests": 1}, "gpus": gpus or {}}
    scenario = Scenario(**raw)
    if layers is not None:
        spec = scenario.model_spec().model_copy(update={"num_layers": layers})
        scenario = scenario.model_copy(update={"model": spec})
        scenario = Scenario.model_validate(scenario.model_dump())
    return make_cost(scenario)


def step_time(gpu: str = "h100", model: str = "llama3-8b", *, prefill_seqs: int = 0, prefill_len: int = 0,
              decode_batch: int = 0, decode_ctx: int = 0, tensor_parallel: int = 1, dtype: str = "bf16",
              layers: int | None = None, cost: str = "calibrated") -> float:
    """Seconds of one whole-model step (layers x layer + lm_head on the sampled tokens)."""
    model_cost, _ = cost_model(gpu, model, tensor_parallel=tensor_parallel, dtype=dtype, layers=layers, cost=cost)
    return model_cost.seconds(plan_from_shape(prefill_seqs, prefill_len, decode_batch, decode_ctx))
