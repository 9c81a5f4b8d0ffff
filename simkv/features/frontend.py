"""Client-side time outside the engine's steps: the serving frontend (HTTP, tokenisation, the
engine's input queue, detokenisation and streaming back).

A benchmark client's TTFT runs from sending the request to the first token arriving; the engine's
TTFT (simkv's `latency_s.ttft`) runs from the engine seeing the request to its first token. simkv
models the difference as a stated per-request cost `fixed_s + per_prompt_token_s x prompt tokens`,
per engine preset; `scenario.frontend` overrides either part. With closed-loop clients the cost
also paces the clients (the engine sees a request `cost` after it was sent); with open-loop
arrivals the stream's times are the engine's arrivals and the client sent `cost` earlier.

vLLM V1's fixed term is measured: the gap between `vllm bench serve`'s client TTFT and the
server's own `vllm:time_to_first_token_seconds`, +8.4 ms and +12.0 ms in two rounds of the
`openai` (completions) backend, mean 10.2 ms (vllm-project/vllm pull request #54628: vLLM
0.28.1rc1, Qwen2.5-0.5B-Instruct, random 512 in / 128 out, --max-concurrency 8, one RTX 4070
laptop GPU under WSL2 — another host CPU will differ). Its per-token term (tokenisation) is inside
the server's TTFT there, so it is not separated: 0. For the other engines we found no public
measurement isolating the frontend from prefill and queueing, so their defaults are 0, marked
"not measured". Give your own (the same gap, measured on your stack) in `scenario.frontend`.
"""

from __future__ import annotations

import numpy as np

NOT_MEASURED = "not measured: no public measurement isolating this engine's frontend time was found; 0 assumed"

VLLM_V1_MEASURED = ("measured: client TTFT - server vllm:time_to_first_token_seconds, mean of +8.4 / +12.0 ms "
                    "(vllm-project/vllm PR #54628, vLLM 0.28.1rc1, `vllm bench serve --backend openai`, RTX 4070 "
                    "laptop host); per prompt token not separated (0)")

FRONTEND_DEFAULTS: dict[str, dict] = {
    **{preset: {"fixed_s": 0.0, "per_prompt_token_s": 0.0, "source": NOT_MEASURED}
       for preset in ("simkv", "vllm-v0", "tgi", "orca-max", "orca-pow2", "orca-oracle",
                      "fastertransformer", "sarathi-serve", "sglang", "trtllm")},
    "vllm-v1": {"fixed_s": 0.0102, "per_prompt_token_s": 0.0, "source": VLLM_V1_MEASURED},
}


def resolve(frontend, preset: str) -> dict:
    """{fixed_s, per_prompt_token_s, source} of a scenario's frontend (its fields win over the preset's)."""
    base = dict(FRONTEND_DEFAULTS.get(preset, {"fixed_s": 0.0, "per_prompt_token_s": 0.0, "source": NOT_MEASURED}))
    given = {k: getattr(frontend, k) for k in ("fixed_s", "per_prompt_token_s") if getattr(frontend, k) is not None}
    if given:
        base.update(given)
        base["source"] = "scenario.frontend" if len(given) == 2 else f"scenario.frontend ({', '.join(given)}); rest: {base['source']}"
    return base


def per_request_s(resolved: dict, prompt_tokens: np.ndarray) -> np.ndarray:
    """The frontend's time per request (s)."""
    return resolved["fixed_s"] + resolved["per_prompt_token_s"] * prompt_tokens.astype(float)
