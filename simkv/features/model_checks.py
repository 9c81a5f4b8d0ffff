"""Build-time checks of the model-dependent engine options (MoE, quantisation, speculative
decoding, LoRA): each bad combination is a SimkvError naming the field and the fix."""

from __future__ import annotations

from simkv.errors import SimkvError
from simkv.specs import ModelSpec


def check_moe_engine(model: ModelSpec, e, tp: int) -> None:
    if model.moe is None:
        if e.expert_parallel:
            raise SimkvError("expert_parallel needs a mixture-of-experts model", field="engine.expert_parallel",
                             fix="remove it, or pick an MoE model (e.g. mixtral-8x7b)")
        if e.expert_load_imbalance != 1.0:
            raise SimkvError("expert_load_imbalance needs a mixture-of-experts model", field="engine.expert_load_imbalance",
                             fix="remove it, or pick an MoE model (e.g. mixtral-8x7b)")
        return
    if e.expert_parallel:
        if tp == 1:
            raise SimkvError("expert parallelism spreads experts over the replica's GPUs; tensor_parallel is 1",
                             field="engine.expert_parallel", fix="raise hardware.tensor_parallel, or remove expert_parallel")
        if model.moe.num_experts % tp:
            raise SimkvError(f"{model.moe.num_experts} experts do not divide over {tp} GPUs", field="engine.expert_parallel",
                             fix=f"use a tensor_parallel that divides {model.moe.num_experts}")


def check_speculative(scenario, model: ModelSpec, e, tp: int) -> ModelSpec | None:
    """Checks engine.speculative against the engine and model; the draft model's spec (method draft)."""
    s = e.speculative
    if s is None:
        return None
    if e.scheduler == "tgi" and s.method not in ("ngram", "medusa"):
        raise SimkvError(f"TGI speculates with n-gram lookup or Medusa heads (--speculate), not {s.method}",
                         field="engine.speculative.method", fix="use ngram or medusa with the tgi preset, or preset vllm-v1")
    if scenario.workload.sampling.beam_width > 1:
        raise SimkvError("speculative decoding with beam search is not modelled", field="engine.speculative",
                         fix="remove engine.speculative, or use beam_width 1")
    if e.scheduler == "static":
        raise SimkvError("speculative decoding is modelled for continuous-batching schedulers",
                         field="engine.speculative", fix="use another scheduler, or remove engine.speculative")
    if s.method != "draft":
        return None
    draft = scenario.draft_model_spec()
    if draft.vocab_size != model.vocab_size:
        raise SimkvError(f"the draft model's vocabulary ({draft.vocab_size}) differs from the target's ({model.vocab_size})",
                         field="engine.speculative.draft_model", fix="pick a draft of the same model family (same tokenizer)")
    try:
        draft.shard(tp)
    except ValueError as err:
        raise SimkvError(f"draft model: {err}", field="engine.speculative.draft_model",
                         fix="pick a draft whose head counts divide hardware.tensor_parallel") from None
    return draft


def draft_memory(draft: ModelSpec | None, e, tp: int, lora_bytes: float = 0.0) -> dict:
    """Extra per-GPU memory: the draft model's weights and KV bytes per token (same dtypes and
    tensor parallelism) and the LoRA adapter slots."""
    if draft is None:
        return {"extra_weight_bytes": lora_bytes} if lora_bytes else {}
    return {"extra_weight_bytes": draft.weight_bytes_per_gpu(e.weight_dtype, tp) + lora_bytes,
            "extra_kv_bytes_per_token": draft.kv_bytes_per_token(e.kv_cache_dtype, tp)}


def speculative_parts(scenario, e, scheduler, cost, draft: ModelSpec | None, max_tokens: int, inputs):
    """The scheduler and step-time model wrapped for speculative decoding."""
    import numpy as np

    from simkv.cost.select import CostInputs, make_cost
    from simkv.cost.speculative import SpeculativeCost
    from simkv.sched.speculative import SpeculativeScheduler
    draft_cost = None
    if draft is not None:
        engine = scenario.engine.model_copy(update={"host_overhead_s": 0.0, "speculative": None,
                                                    "expert_parallel": False, "expert_load_imbalance": 1.0})
        sub = scenario.model_copy(update={"model": draft, "engine": engine})
        draft_cost = make_cost(sub, CostInputs(calibration=inputs.calibration), max_tokens)[0]
    rng = np.random.default_rng(np.random.SeedSequence([scenario.run.seed, 15]))
    return SpeculativeScheduler(scheduler, e.speculative, rng), SpeculativeCost(cost, e.speculative, draft_cost)


# ---------------------------------------------------------------- LoRA
def _tgi_like(e) -> bool:
    return e.scheduler == "tgi"


def check_lora(scenario, e) -> None:
    w = scenario.workload.lora
    if w is None:
        return
    if e.lora is None:
        raise SimkvError("the requests use LoRA adapters but the engine serves none", field="engine.lora",
                         fix="add engine.lora: {max_loras: 4, max_lora_rank: 16}, or remove workload.lora")
    if w.rank > e.lora.max_lora_rank:
        raise SimkvError(f"adapter rank {w.rank} exceeds max_lora_rank {e.lora.max_lora_rank}", field="engine.lora.max_lora_rank",
                         fix=f"raise it to {w.rank} or more")
    if e.lora.max_cpu_loras is not None and w.adapters > e.lora.max_cpu_loras:
        raise SimkvError(f"{w.adapters} adapters exceed max_cpu_loras {e.lora.max_cpu_loras}: loading from disk is not modelled",
                         field="engine.lora.max_cpu_loras", fix=f"raise it to {w.adapters}, or use fewer adapters")
    if e.speculative is not None:
        raise SimkvError("speculative decoding together with LoRA adapters is not modelled", field="engine.lora",
                         fix="remove engine.speculative or engine.lora")


def lora_gpu_bytes(scenario, model: ModelSpec, e, tp: int) -> float:
    """GPU memory of the adapter slots: vLLM sizes max_loras slots for max_lora_rank; TGI loads
    every adapter of the workload at start-up."""
    from simkv.features.lora import adapter_bytes
    if e.lora is None:
        return 0.0
    w = scenario.workload.lora
    if _tgi_like(e) and w is not None:
        return w.adapters * adapter_bytes(model, w.rank, tp)
    return e.lora.max_loras * adapter_bytes(model, e.lora.max_lora_rank, tp)


def lora_parts(scenario, model: ModelSpec, gpu, e, tp: int, table, scheduler, cost):
    """The scheduler and step-time model wrapped for multi-LoRA serving."""
    from simkv.cost.lora import LoraCost
    from simkv.features.lora import adapter_bytes, lora_shapes, sample_adapters
    from simkv.sched.lora import LoraScheduler
    w = scenario.workload.lora
    adapter_of = sample_adapters(w, table.group, scenario.run.seed)
    tgi = _tgi_like(e)
    max_loras = w.adapters if tgi else e.lora.max_loras
    load_s = adapter_bytes(model, w.rank, tp) / gpu.host_to_device_bps
    sched = LoraScheduler(scheduler, adapter_of, max_loras=max_loras, slots=max_loras, load_s=load_s,
                          arrival_s=table.arrival_s)
    if tgi:  # every adapter preloaded at start-up
        for a in range(w.adapters):
            sched.resident[a] = None
    if hasattr(cost, "lc"):
        c_lin, ops = cost._c_lin, cost.lc.ops
        gemm_time = lambda m, k, n: c_lin * ops.gemm.time(m, k, n, "bfloat16")
        how = "measured GEMM tables (small-n shapes scaled by roofline efficiency) x fitted graph factor"
    else:
        flops, bw = gpu.achievable_flops("bf16"), gpu.achievable_bandwidth_bps
        gemm_time = lambda m, k, n: max(2.0 * m * k * n / flops, (k * n + m * (k + n)) * 2 / bw)
        how = "roofline"
    source = (f"low-rank GEMMs per adapter group: {how}; plus assumed {e.lora.overhead_per_adapter_s:g} s per distinct "
              f"adapter per layer (not measured); adapter copies at the host-to-device rate ({load_s * 1e3:.2f} ms each)")
    lcost = LoraCost(cost, sched, adapter_of, {a: w.rank for a in range(w.adapters)}, lora_shapes(model, tp), gemm_time,
                     model.num_layers, e.lora.overhead_per_adapter_s, source)
    return sched, lcost
