"""Client-side time outside the engine's steps: the serving frontend (HTTP, tokenisation, the
engine's input queue, detokenisation and streaming back).

A benchmark client's TTFT runs from sending the request to the first token arriving; the engine's
TTFT (simkv's `latency_s.ttft`) runs from the engine seeing the request to its first token. simkv
models the difference as a stated per-request cost `fixed_s + per_prompt_token_s x prompt tokens`,
per engine preset; `scenario.frontend` overrides either part. With closed-loop clients the cost
also paces the clients (the engine sees a request `cost` after it was sent); with open-loop
arrivals the stream's times are the engine's arrivals and the client sent `cost` earlier.

No preset default below is a measurement: we found no public measurement of these engines'
per-request frontend time that isolates it from prefill and queueing, so every default is 0 and
marked "not measured". Give your own (e.g. from the gap between `vllm bench serve` TTFT at
concurrency 1 and the engine's `vllm:time_to_first_token_seconds`) in `scenario.frontend`.
"""

from __future__ import annotations

import numpy as np

NOT_MEASURED = "not measured: no public measurement isolating this engine's frontend time was found; 0 assumed"

FRONTEND_DEFAULTS: dict[str, dict] = {
    preset: {"fixed_s": 0.0, "per_prompt_token_s": 0.0, "source": NOT_MEASURED}
    for preset in ("simkv", "vllm-v1", "vllm-v0", "tgi", "orca-max", "orca-pow2", "orca-oracle",
                   "fastertransformer", "sarathi-serve")
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
