"""Build-time checks of the model-dependent engine options (MoE, quantisation, speculative
decoding, LoRA): each bad combination is a SimkvError naming the field and the fix."""

from __future__ import annotations

from simkv.errors import SimkvError
from simkv.catalog import builtin_models
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
    from simkv.scenario import _lookup
    draft = _lookup(s.draft_model, scenario.models, builtin_models(), "engine.speculative.draft_model")
    if draft.vocab_size != model.vocab_size:
        raise SimkvError(f"the draft model's vocabulary ({draft.vocab_size}) differs from the target's ({model.vocab_size})",
                         field="engine.speculative.draft_model", fix="pick a draft of the same model family (same tokenizer)")
    try:
        draft.shard(tp)
    except ValueError as err:
        raise SimkvError(f"draft model: {err}", field="engine.speculative.draft_model",
                         fix="pick a draft whose head counts divide hardware.tensor_parallel") from None
    return draft


def draft_memory(draft: ModelSpec | None, e, tp: int) -> dict:
    """The draft model's weights and KV bytes per token per GPU (same dtypes and tensor parallelism)."""
    if draft is None:
        return {}
    return {"extra_weight_bytes": draft.weight_bytes_per_gpu(e.weight_dtype, tp),
            "extra_kv_bytes_per_token": draft.kv_bytes_per_token(e.kv_cache_dtype, tp)}


def speculative_parts(scenario, e, scheduler, cost, draft: ModelSpec | None, max_tokens: int):
    """The scheduler and step-time model wrapped for speculative decoding."""
    import numpy as np

    from simkv.build import make_cost
    from simkv.cost.speculative import SpeculativeCost
    from simkv.sched.speculative import SpeculativeScheduler
    draft_cost = None
    if draft is not None:
        engine = scenario.engine.model_copy(update={"host_overhead_s": 0.0, "speculative": None,
                                                    "expert_parallel": False, "expert_load_imbalance": 1.0})
        sub = scenario.model_copy(update={"model": draft, "engine": engine})
        draft_cost = make_cost(sub, max_tokens)[0]
    rng = np.random.default_rng(np.random.SeedSequence([scenario.run.seed, 15]))
    return SpeculativeScheduler(scheduler, e.speculative, rng), SpeculativeCost(cost, e.speculative, draft_cost)
