"""Engine features that change what a request costs or whether it fits, one module each:
LoRA adapters (`lora`), speculative decoding (`speculative`), KV offload tiers (`offload_setup`),
per-step host time (`host_overhead`), client-side frontend time (`frontend`), and the build-time
checks of model-dependent options (`model_checks`). Each holds its per-engine defaults with sources;
the schema (`simkv.scenario`) declares the fields, `simkv.build`, `simkv.cost` and `simkv.sched` use them."""
