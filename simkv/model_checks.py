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
