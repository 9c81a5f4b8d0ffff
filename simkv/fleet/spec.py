"""The scenario's `fleet:` section: pools of replicas, the router in front of them, faults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from simkv.specs import NonNegativeFloat, NonNegativeInt, PositiveInt, Strict

ROUTER_POLICIES = ("round_robin", "random", "least_loaded", "kv_aware", "session", "by_class")
POOL_SET_PREFIXES = ("model", "hardware", "engine", "cost", "slo", "frontend")
MAX_REPLICAS = 10_000


class RouterSpec(Strict):
    """What sends each request to a replica. The router knows only what a real one can: what it sent
    where, which answers came back, and (kv_aware) the prefixes it sent to each replica."""

    policy: Literal["round_robin", "random", "least_loaded", "kv_aware", "session", "by_class"] = Field(
        "round_robin", description="round_robin, random, least_loaded (fewest outstanding), kv_aware (prefix "
        "cache hits weighed against load), session (a conversation stays on its replica), by_class (classes to "
        "pools, least loaded within)")
    load: Literal["requests", "tokens"] = Field(
        "requests", description="least_loaded / kv_aware / by_class: load = outstanding requests, or outstanding "
        "tokens (prompt + max_new_tokens of unanswered requests)")
    hit_weight: NonNegativeFloat = Field(
        4.0, description="kv_aware: a whole prompt found cached is worth this many requests of load (load "
        "measured in mean-request units)")
    decision_delay_s: NonNegativeFloat = Field(0.0, le=60, description="time a routing decision takes; added to every request's latency (s)")
    state_interval_s: NonNegativeFloat = Field(
        0.0, le=3600, description="the router learns of answers (load going down) only every this often; "
        "0: at once (s)")
    seed: NonNegativeInt = Field(0, description="random: seed of the choices (with run.seed)")


class PoolSpec(Strict):
    """A group of identical replicas; `set` overrides the scenario for this pool."""

    name: str = Field(min_length=1, description="label in the fleet summary and requests.csv")
    replicas: PositiveInt = Field(1, le=MAX_REPLICAS, description="replicas in the pool (count); each runs on hardware.tensor_parallel GPUs")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted overrides for this pool, e.g. engine.preset: tgi")
    classes: list[str] | None = Field(None, description="by_class: the request classes this pool serves (none: "
                                      "the classes no other pool names)")

    @field_validator("set")
    @classmethod
    def _engine_side_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key.split(".")[0] not in POOL_SET_PREFIXES:
                raise ValueError(f"'{key}' cannot differ between pools: a pool may set {', '.join(POOL_SET_PREFIXES)}")
        return value


class FaultSpec(Strict):
    """A replica fails at a time: its running and queued requests are retried through the router."""

    pool: str = Field(description="the pool of the failing replica")
    replica: NonNegativeInt = Field(0, description="which replica of the pool (0-based)")
    at_s: NonNegativeFloat = Field(description="when it fails (s)")


class DisaggregationSpec(Strict):
    """Prefill/decode disaggregation: requests are prefilled in one pool, their KV shipped over a
    link to a replica of another pool, which runs the decodes (simkv.fleet.disagg)."""

    prefill: str = Field(description="the pool that computes prompts (and samples the first token)")
    decode: str = Field(description="the pool that receives the KV and runs the decodes")
    link: Literal["nvlink", "infiniband", "pcie"] = Field(
        "nvlink", description="what carries the KV between the replicas: nvlink (NCCL send/recv profile, one "
        "node), infiniband (400 Gb/s NDR per GPU), pcie (the GPU's measured host link)")


class AutoscaleSpec(Strict):
    """Adds or drains replicas of one pool from a load signal (simkv.fleet.autoscale). The pool's
    `replicas` is how many serve at the start."""

    pool: str = Field(description="the autoscaled pool")
    min: PositiveInt = Field(1, le=MAX_REPLICAS, description="never fewer replicas serving or starting (count)")
    max: PositiveInt = Field(le=MAX_REPLICAS, description="never more replicas serving or starting (count); this "
                             "many engines are built")
    metric: Literal["queue", "kv", "slo"] = Field(
        "queue", description="queue: mean waiting requests per replica; kv: mean KV-cache utilisation (0-1); "
        "slo: share of the pool's requests whose first token came in the last window_s that met slo.ttft_s")
    target: NonNegativeFloat = Field(description="queue / kv: the signal to keep each replica at (add above it, drain "
                                     "when one fewer replica would stay below it); slo: the attainment to keep (0-1)")
    interval_s: float = Field(10.0, gt=0, le=86400, description="the policy reads the signal this often (s)")
    window_s: float = Field(60.0, gt=0, le=86400, description="slo: the window attainment is measured over (s)")
    cold_start_s: NonNegativeFloat | None = Field(
        None, le=86400, description="time from adding a replica to its serving (s); give it or load_gbps")
    load_gbps: float | None = Field(
        None, gt=0, le=10_000, description="cold start = the model's weights per GPU / this GB/s (the weight "
        "loading rate of your storage: measure it); give it or cold_start_s")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        if (self.cold_start_s is None) == (self.load_gbps is None):
            raise ValueError("give exactly one of cold_start_s (s) and load_gbps (weights loaded at GB/s)")
        if self.metric in ("kv", "slo") and self.target > 1:
            raise ValueError(f"metric {self.metric}: target is a fraction (0-1), not {self.target}")
        return self


class FleetSpec(Strict):
    """Several replicas (pools of them) on one clock behind a router."""

    router: RouterSpec = Field(default_factory=RouterSpec, description="the routing policy")
    pools: list[PoolSpec] = Field(min_length=1, description="the pools of replicas")
    faults: list[FaultSpec] = Field(default_factory=list, description="replicas that fail during the run")
    disaggregation: DisaggregationSpec | None = Field(
        None, description="prefill/decode disaggregation between two pools; none: every replica serves whole requests")
    autoscale: AutoscaleSpec | None = Field(
        None, description="add and drain replicas of a pool from its load; none: every pool keeps its replicas")
    prices: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="$ per GPU-hour by GPU type (hardware.gpu name), for `simkv capacity` "
        "on the fleet; --price overrides")

    @model_validator(mode="after")
    def _consistent(self):
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(dupes)}")
        if sum(p.replicas for p in self.pools) > MAX_REPLICAS:
            raise ValueError(f"at most {MAX_REPLICAS} replicas in a fleet")
        for i, f in enumerate(self.faults):
            pool = next((p for p in self.pools if p.name == f.pool), None)
            if pool is None:
                raise ValueError(f"faults[{i}]: no pool named '{f.pool}' (pools: {', '.join(names)})")
            if f.replica >= pool.replicas:
                raise ValueError(f"faults[{i}]: pool '{f.pool}' has replicas 0..{pool.replicas - 1}, not {f.replica}")
        if self.disaggregation is not None:
            _check_disaggregation(self, names)
        if self.autoscale is not None:
            _check_autoscale(self, names)
        return self


def _check_autoscale(fleet: FleetSpec, names: list[str]) -> None:
    a = fleet.autoscale
    pool = next((p for p in fleet.pools if p.name == a.pool), None)
    if pool is None:
        raise ValueError(f"autoscale.pool: no pool named '{a.pool}' (pools: {', '.join(names)})")
    if not a.min <= pool.replicas <= a.max:
        raise ValueError(f"autoscale: pool '{a.pool}' starts with {pool.replicas} replicas, outside "
                         f"[min {a.min}, max {a.max}]; set its replicas within them")
    if sum(p.replicas for p in fleet.pools) - pool.replicas + a.max > MAX_REPLICAS:
        raise ValueError(f"at most {MAX_REPLICAS} replicas in a fleet (autoscale.max counts)")
    if fleet.faults:
        raise ValueError("autoscaling with faults is not simulated yet: remove fleet.faults or fleet.autoscale")
    if fleet.disaggregation is not None:
        raise ValueError("autoscaling with disaggregation is not simulated yet: remove one of them")


def _check_disaggregation(fleet: FleetSpec, names: list[str]) -> None:
    d = fleet.disaggregation
    for role in ("prefill", "decode"):
        if getattr(d, role) not in names:
            raise ValueError(f"disaggregation.{role}: no pool named '{getattr(d, role)}' (pools: {', '.join(names)})")
    if d.prefill == d.decode:
        raise ValueError("disaggregation: prefill and decode must be two different pools")
    others = [n for n in names if n not in (d.prefill, d.decode)]
    if others:
        raise ValueError(f"disaggregation: every pool must be the prefill or the decode pool; {', '.join(others)} "
                         "would serve nothing (remove it)")
    if fleet.faults:
        raise ValueError("disaggregation with faults is not simulated yet: remove fleet.faults or fleet.disaggregation")
    if fleet.router.policy == "by_class":
        raise ValueError("disaggregation with by_class routing is not simulated yet: use another router policy")
    for p in fleet.pools:
        same = [k for k in p.set if k.split(".")[0] == "model" or k in ("hardware.tensor_parallel",
                                                                        "engine.kv_cache_dtype")]
        if same:
            raise ValueError(f"disaggregation: pool '{p.name}' sets {', '.join(same)}; the prefill and decode "
                             "pools must share the model, tensor parallelism and KV dtype (the KV is shipped as is)")


def check_fleet(fleet: FleetSpec, scenario) -> None:
    """Checks that need the rest of the scenario (called by Scenario's validator)."""
    a = fleet.autoscale
    if a is not None and a.metric == "slo":
        pool = next(p for p in fleet.pools if p.name == a.pool)
        if (scenario.slo is None or scenario.slo.ttft_s is None) and "slo.ttft_s" not in pool.set:
            raise ValueError("fleet.autoscale.metric slo needs slo.ttft_s (the TTFT target attainment is measured against)")
    w = scenario.workload
    class_names = [c.name for c in w.classes] if w.classes else []
    named = [c for p in fleet.pools for c in (p.classes or [])]
    unknown = sorted(set(named) - set(class_names))
    if unknown:
        raise ValueError(f"fleet.pools: unknown class {', '.join(unknown)} (workload.classes: "
                         f"{', '.join(class_names) or 'none'})")
    if fleet.router.policy == "by_class":
        if not class_names:
            raise ValueError("fleet.router.policy by_class needs workload.classes")
        default = [p.name for p in fleet.pools if p.classes is None]
        orphans = [c for c in class_names if c not in named]
        if orphans and not default:
            raise ValueError(f"fleet: no pool serves class {', '.join(orphans)}: list it in a pool's classes, "
                             "or leave one pool without classes (it takes the rest)")
