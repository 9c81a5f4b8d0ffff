"""Scenario files as pydantic models: what to simulate (model, hardware, engine, workload, run,
SLOs) and named variants compared on the identical request stream.

Every field documents its unit. Objects are frozen and reject unknown fields, so a misspelt key
is an error (with a suggestion, see `simkv.files.scenario_file`), never silently ignored.
"""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Literal, Union

from annotated_types import Le
from pydantic import Field, field_validator, model_validator

from simkv.catalog import builtin_gpus, builtin_models
from simkv.errors import SimkvError
from simkv.features.lora import LoraEngine, LoraWorkload
from simkv.features.speculative import Speculative
from simkv.fleet.spec import FleetSpec, check_fleet
from simkv.specs import (Bool, DType, Float, GpuSpec, ModelSpec, NonNegativeFloat, NonNegativeInt,
                         PositiveFloat, PositiveInt, Strict, WeightDType)
from simkv.specs import MAX_REQUESTS, Z99  # noqa: F401 (pure constants, shared with the workload generators)

# ---------------------------------------------------------------- workload

MAX_RATE = 1e7  # requests/s, far beyond any replica


class PoissonArrivals(Strict):
    """Exponential gaps between requests (coefficient of variation 1)."""

    process: Literal["poisson"]
    rate: PositiveFloat = Field(le=MAX_RATE, description="mean arrival rate (requests/s)")


class GammaArrivals(Strict):
    """Gamma-distributed gaps: cv > 1 is burstier than Poisson, cv < 1 smoother."""

    process: Literal["gamma"]
    rate: PositiveFloat = Field(le=MAX_RATE, description="mean arrival rate (requests/s)")
    cv: PositiveFloat = Field(description="coefficient of variation of the gaps (std/mean, dimensionless)")


class OnOffArrivals(Strict):
    """Bursts: Poisson arrivals at `rate_on` during on-periods, none during off-periods; both
    period lengths are exponential (a two-state Markov-modulated Poisson process)."""

    process: Literal["onoff"]
    rate_on: PositiveFloat = Field(le=MAX_RATE, description="arrival rate while on (requests/s)")
    on_s: PositiveFloat = Field(description="mean length of an on-period (s)")
    off_s: PositiveFloat = Field(description="mean length of an off-period (s)")


class PiecewiseArrivals(Strict):
    """A time-varying Poisson rate given at knots (e.g. a diurnal curve), optionally repeating."""

    process: Literal["piecewise"]
    times_s: list[NonNegativeFloat] = Field(min_length=1, description="knot times, increasing, the first 0 (s)")
    rates: list[Annotated[NonNegativeFloat, Le(MAX_RATE)]] = Field(min_length=1, description="rate at each knot (requests/s)")
    interpolate: Literal["step", "linear"] = Field("step", description="hold each rate to the next knot, or interpolate")
    period_s: PositiveFloat | None = Field(None, description="repeat the curve with this period (s); none: hold the last rate")

    @model_validator(mode="after")
    def _knots(self):
        if len(self.times_s) != len(self.rates):
            raise ValueError("times_s and rates must have the same length")
        if self.times_s[0] != 0 or any(b <= a for a, b in zip(self.times_s, self.times_s[1:])):
            raise ValueError("times_s must start at 0 and increase")
        if max(self.rates) <= 0:
            raise ValueError("at least one rate must be positive")
        return self


class SpikeArrivals(Strict):
    """Poisson at `rate`, multiplied by `factor` from `start_s` for `duration_s` (a load spike)."""

    process: Literal["spike"]
    rate: PositiveFloat = Field(le=MAX_RATE, description="base arrival rate (requests/s)")
    factor: PositiveFloat = Field(le=1e6, description="rate multiplier during the spike (dimensionless)")
    start_s: NonNegativeFloat = Field(description="when the spike starts (s)")
    duration_s: PositiveFloat = Field(description="how long it lasts (s)")


class ClosedArrivals(Strict):
    """Closed-loop clients (`vllm bench serve --max-concurrency`, genai-perf `--concurrency`): N
    clients, each with at most one request in flight; a client sends its next request a think time
    after the previous one's last token (or after it was refused). Needs run.num_requests."""

    process: Literal["closed"]
    concurrency: PositiveInt = Field(description="clients, each with one request in flight at most (count)")
    think_s: NonNegativeFloat = Field(0.0, description="mean think time after an answer, exponential; 0: none (s)")
    ramp_up_s: NonNegativeFloat = Field(0.0, description="client i starts at i/N x ramp_up_s; 0: all start together (s)")


class OfflineArrivals(Strict):
    """Every request queued at time 0 (`vllm bench throughput`, MLPerf Offline); throughput is the
    headline. Needs run.num_requests (or a trace)."""

    process: Literal["offline"]


Arrivals = Annotated[Union[PoissonArrivals, GammaArrivals, OnOffArrivals, PiecewiseArrivals, SpikeArrivals,
                           ClosedArrivals, OfflineArrivals],
                     Field(discriminator="process")]
CLIENT_PROCESSES = ("closed", "offline")


class _Bounded(Strict):
    min: PositiveInt = Field(1, description="samples below are raised to this (tokens)")
    max: PositiveInt | None = Field(None, description="samples above are lowered to this (tokens); none = no bound")

    @model_validator(mode="after")
    def _ordered(self):
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class FixedLength(Strict):
    """Every request has the same length."""

    dist: Literal["fixed"]
    value: PositiveInt = Field(description="length (tokens)")


class UniformLength(Strict):
    """Integers uniform on [low, high]."""

    dist: Literal["uniform"]
    low: PositiveInt = Field(description="smallest length (tokens)")
    high: PositiveInt = Field(description="largest length (tokens)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class ExponentialLength(_Bounded):
    """Exponential with the given mean, rounded up to whole tokens, then bounded to [min, max]."""

    dist: Literal["exponential"]
    mean: PositiveFloat = Field(description="mean length before bounding (tokens)")


class LognormalLength(_Bounded):
    """Lognormal given either by (mean, p99) or by the underlying normal's (mu, sigma)."""

    dist: Literal["lognormal"]
    mean: PositiveFloat | None = Field(None, description="mean length (tokens); with p99")
    p99: PositiveFloat | None = Field(None, description="99th percentile length (tokens); with mean")
    mu: Float | None = Field(None, description="mean of log(length); with sigma")
    sigma: PositiveFloat | None = Field(None, description="std of log(length); with mu")

    @model_validator(mode="after")
    def _one_parametrisation(self):
        by_moments = self.mean is not None and self.p99 is not None
        by_params = self.mu is not None and self.sigma is not None
        if by_moments == by_params:
            raise ValueError("give either mean and p99, or mu and sigma (exactly one pair)")
        if by_moments and self.p99 <= self.mean:
            raise ValueError(f"p99 ({self.p99}) must exceed mean ({self.mean}) for a lognormal")
        if by_moments and math.log(self.p99 / self.mean) > Z99 ** 2 / 2:
            raise ValueError(f"no lognormal has mean {self.mean} and p99 {self.p99}: p99/mean must be "
                             f"<= {math.exp(Z99 ** 2 / 2):.2f}; give mu and sigma instead")
        return self


Lengths = Annotated[Union[FixedLength, UniformLength, ExponentialLength, LognormalLength],
                    Field(discriminator="dist")]


class CapMaxNew(Strict):
    """Clients ask for a fixed max_new_tokens; outputs longer than the cap are cut at it."""

    policy: Literal["cap"]
    tokens: PositiveInt = Field(description="the max_new_tokens every client sends (tokens)")


class MultipleMaxNew(Strict):
    """Clients ask for a multiple of the true output length (rounded up)."""

    policy: Literal["multiple"]
    factor: Float = Field(ge=1.0, description="max_new_tokens / true output length (>= 1)")


class ExactMaxNew(Strict):
    """Clients ask for exactly the true output length (an oracle client)."""

    policy: Literal["exact"]


MaxNewTokens = Annotated[Union[CapMaxNew, MultipleMaxNew, ExactMaxNew], Field(discriminator="policy")]


class SharedPrefix(Strict):
    """System prompts shared by a fraction of requests (what prefix caching can reuse)."""

    fraction: Float = Field(ge=0, le=1, description="share of requests that start with a shared prefix (dimensionless)")
    tokens: PositiveInt = Field(description="length of each shared prefix, added before the sampled prompt (tokens)")
    num_prefixes: PositiveInt = Field(1, description="distinct shared prefixes, picked uniformly (count)")


class Sampling(Strict):
    """Parallel sampling (n sequences from one prompt) or beam search (beam_width beams)."""

    n: PositiveInt = Field(1, le=1024, description="sequences sampled per request (count); each has its own output length")
    beam_width: PositiveInt = Field(1, le=1024, description="beams per request (count); all run for the request's output length")
    beam_reselect: Float | None = Field(
        None, ge=0, le=1, description="beam search: chance per step that a beam continues another beam's hypothesis "
        "(dimensionless); paged engines then share that beam's blocks; required with beam_width > 1")

    @model_validator(mode="after")
    def _one_mode(self):
        if self.n > 1 and self.beam_width > 1:
            raise ValueError("give n (parallel sampling) or beam_width (beam search), not both")
        if (self.beam_width > 1) != (self.beam_reselect is not None):
            raise ValueError("beam_reselect is required with beam_width > 1, and only then")
        return self

    @property
    def sequences(self) -> int:
        return max(self.n, self.beam_width)


class TraceColumns(Strict):
    """Which columns (CSV header names or JSON keys) hold what."""

    arrival: str | None = Field(None, description="arrival time column; none: lengths only (arrivals from workload.arrival)")
    prompt: str = Field(description="prompt (input) tokens column")
    output: str = Field(description="output (generated) tokens column")
    session: str | None = Field(None, description="conversation id column: turns of one conversation share their prompt history")
    block_ids: str | None = Field(None, description="column with a list of chained prefix-block ids per request (Mooncake's hash_ids)")
    block_tokens: PositiveInt = Field(512, description="tokens per id in block_ids (tokens)")


class TraceSpec(Strict):
    """Requests from a trace: a shipped one by name, or your own CSV / JSON Lines file."""

    name: Literal["azure2023_conv", "mooncake_conversation", "mooncake_synthetic", "lengths_sharegpt_8k_llama2",
                  "lengths_arxiv_summarization_llama2", "lengths_bwb_llama2"] | None = Field(
        None, description="a trace shipped with simkv (see `simkv trace stats NAME`)")
    path: str | None = Field(None, description="your own trace file, relative to the scenario file")
    format: Literal["csv", "jsonl"] | None = Field(None, description="file format; default from the file name")
    columns: TraceColumns | None = Field(None, description="column mapping (required for your own file)")
    time_unit: Literal["s", "ms", "us", "datetime"] = Field("s", description="unit of the arrival column (datetime: 'YYYY-MM-DD HH:MM:SS[.f]')")
    window_s: tuple[NonNegativeFloat, PositiveFloat] | None = Field(None, description="keep arrivals in [start, end) after the first (s)")
    sample: Float = Field(1.0, gt=0, le=1, description="keep this share of the requests, chosen at random with run.seed (dimensionless)")
    speed: PositiveFloat = Field(1.0, description="replay k times faster: arrival gaps divided by k (dimensionless)")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.name is None) == (self.path is None):
            raise ValueError("give either name (a shipped trace) or path (your own file)")
        if self.path is not None and self.columns is None:
            raise ValueError("your own trace needs columns: {arrival: ..., prompt: ..., output: ...}")
        if self.window_s is not None and self.window_s[1] <= self.window_s[0]:
            raise ValueError("window_s must be [start, end) with end > start")
        return self


class RequestClass(Strict):
    """One kind of traffic (e.g. interactive chat vs batch summarisation) with its own arrivals,
    lengths and SLO; classes are merged into one stream and reported separately."""

    name: str = Field(min_length=1, description="label in the per-class summary")
    arrival: Arrivals = Field(description="this class's arrival process")
    prompt_tokens: Lengths = Field(description="this class's prompt lengths (tokens)")
    output_tokens: Lengths = Field(description="this class's true output lengths (tokens)")
    max_new_tokens: MaxNewTokens = Field(default_factory=lambda: MultipleMaxNew(policy="multiple", factor=1.0),
                                         description="what this class's clients ask for")
    slo: "Slo | None" = Field(None, description="this class's targets (default: the scenario's slo)")


class Sessions(Strict):
    """Multi-turn conversations: each arrival starts a session; every next turn is sent a think
    time after the previous answer finished, its prompt the whole history plus a new message."""

    turns: Lengths = Field(description="turns per session (count)")
    think_s: PositiveFloat = Field(description="mean think time between an answer and the next turn, exponential (s)")
    user_tokens: Lengths = Field(description="length of each follow-up message (tokens)")


class Workload(Strict):
    """Traffic: when requests arrive and how long they are (synthetic, or from a trace)."""

    trace: TraceSpec | None = Field(None, description="take arrivals and lengths (or only lengths) from a trace")
    classes: list[RequestClass] | None = Field(None, description="several kinds of traffic, merged and reported per class")
    sessions: Sessions | None = Field(None, description="multi-turn conversations (closed loop: turns wait for answers)")
    arrival: Arrivals | None = Field(None, description="arrival process (not needed when a trace has arrival times)")
    prompt_tokens: Lengths | None = Field(None, description="prompt length distribution (tokens); not with a trace")
    output_tokens: Lengths | None = Field(None, description="true output length distribution (tokens); not with a trace")
    max_new_tokens: MaxNewTokens = Field(default_factory=lambda: MultipleMaxNew(policy="multiple", factor=1.0),
                                         description="the limit each client asks for (>= true output)")
    shared_prefix: SharedPrefix | None = Field(None, description="shared system prompts; none by default")
    sampling: Sampling = Field(default_factory=Sampling, description="sequences per request (parallel sampling)")
    lora: LoraWorkload | None = Field(None, description="LoRA adapters the requests use; none: all on the base model")
    @model_validator(mode="after")
    def _lengths_from_somewhere(self):
        if self.classes is not None:
            if self.trace is not None or self.arrival or self.prompt_tokens or self.output_tokens:
                raise ValueError("with classes, each class gives its arrival and lengths: remove the top-level ones")
            names = [c.name for c in self.classes]
            if len(set(names)) != len(names) or not names:
                raise ValueError("classes need distinct names")
            return self
        if self.trace is None and (self.arrival is None or self.prompt_tokens is None or self.output_tokens is None):
            missing = [k for k in ("arrival", "prompt_tokens", "output_tokens") if getattr(self, k) is None]
            raise ValueError(f"without a trace, give {', '.join(missing)}")
        if self.sessions is not None and self.trace is not None:
            raise ValueError("sessions are built from the synthetic lengths, not from a trace")
        if self.trace is not None and (self.prompt_tokens is not None or self.output_tokens is not None):
            raise ValueError("lengths come from the trace: remove prompt_tokens/output_tokens")
        return self

    overlong: Literal["reject", "clip"] = Field(
        "reject", description="prompts that do not fit max_model_len: rejected and counted (as an API "
        "server does), or clipped to fit; outputs always stop at max_model_len")


# ---------------------------------------------------------------- hardware and engine


class Hardware(Strict):
    """The GPUs one replica runs on."""

    gpu: str | GpuSpec = Field(description="catalog name (see `simkv catalog`) or a full GPU spec")
    tensor_parallel: PositiveInt = Field(1, le=1024, description="GPUs one replica's weights and KV are split across")


Reservation = Literal["max_model_len", "pow2", "oracle", "prompt_plus_max_new"]


PresetName = Literal["simkv", "vllm-v1", "vllm-v0", "tgi", "orca-max", "orca-pow2", "orca-oracle",
                     "fastertransformer", "sarathi-serve", "sglang", "trtllm"]


class KvOffload(Strict):
    """KV blocks kept below the GPU prefix cache (simkv.kv.offload): a host-memory tier, then a
    local SSD tier, per GPU. A prefix block found there is loaded instead of recomputed."""

    host_gib: NonNegativeFloat | None = Field(
        None, le=1e6, description="host-memory tier per GPU (GiB); 0: none; default: the preset's (sglang: "
        "hicache_ratio 2 x the GPU KV pool; vllm-v1 and trtllm need it given)")
    ssd_gib: NonNegativeFloat = Field(0.0, le=1e9, description="local SSD tier per GPU (GiB); 0: none")
    ssd_gbps: PositiveFloat = Field(6.8, le=1e4, description="SSD read bandwidth (GB/s); the default is a stated "
                                    "datacenter NVMe figure (PCIe Gen4, Micron 7450), not measured")
    ssd_write_gbps: PositiveFloat = Field(5.6, le=1e4, description="SSD write bandwidth (GB/s); stated default, "
                                          "not measured")
    policy: Literal["write_through", "on_eviction"] | None = Field(
        None, description="when a block is written down: write_through (every computed block) or on_eviction "
        "(when the level above evicts it); default: the preset's (vllm-v1, sglang: write_through; trtllm: "
        "on_eviction)")


class Engine(Strict):
    """How the serving engine allocates KV memory and batches requests. A preset fills in every
    field the scenario leaves unset (see `simkv catalog --presets` and docs/engines.md)."""

    preset: PresetName = Field("simkv", description="engine whose policies and defaults to use")
    scheduler: Literal["fcfs", "chunked", "prefill-first", "tgi", "static", "sglang", "trtllm"] = Field(
        "fcfs", description="batching policy: fcfs (mixed whole prompts), chunked (token budget, vLLM v1 / "
        "Sarathi), prefill-first (vLLM v0), tgi (TGI router), static (FasterTransformer), sglang (SGLang "
        "scheduler), trtllm (TensorRT-LLM capacity + micro-batch schedulers)")
    allocator: Literal["paged", "contiguous"] = Field("paged", description="paged blocks on demand, or one contiguous region per request")
    block_size: PositiveInt = Field(16, le=2 ** 16, description="tokens per KV block (paged); unit of the capacity override")
    reservation: Reservation = Field("max_model_len", description="contiguous: slots reserved at admission")
    placement: Literal["first_fit", "best_fit", "buddy"] = Field(
        "first_fit", description="contiguous: which free extent a region goes to (buddy: power-of-two blocks, Orca)")
    gpu_memory_utilization: Float = Field(0.9, gt=0, le=1, description="fraction of GPU memory the engine may use (dimensionless)")
    max_num_seqs: PositiveInt = Field(256, le=2 ** 20, description="most requests running at once (requests)")
    max_num_batched_tokens: PositiveInt | None = Field(None, le=2 ** 24, description="most tokens processed in one step (tokens); default max(max_model_len, 2048)")
    max_model_len: PositiveInt | None = Field(None, le=2 ** 27, description="longest prompt + output (tokens); default the model's maximum")
    watermark: Float = Field(0.0, ge=0, le=0.5, description="paged: fraction of blocks kept free when admitting (dimensionless); vLLM uses 0.01")
    activation_reserve_gib: NonNegativeFloat | None = Field(None, le=1e5, description="memory held for activations per GPU (GiB); default estimated from the step size")
    num_gpu_blocks: PositiveInt | None = Field(None, le=2 ** 40, description="measured KV capacity in blocks (overrides the memory arithmetic)")
    weight_dtype: WeightDType = Field("bf16", description="weight precision (int4: AWQ/GPTQ-style W4A16, group-128 scales)")
    kv_cache_dtype: DType = Field("bf16", description="KV cache precision")
    host_overhead_s: NonNegativeFloat = Field(0.0, le=10, description="CPU time per step not overlapped with the GPU, "
                                              "fixed part (s); unset: the preset's (simkv.features.host_overhead)")
    host_per_seq_s: NonNegativeFloat | None = Field(None, le=1, description="CPU time per step not overlapped with the "
                                                    "GPU, per sequence in the step (s); unset: the preset's")
    prefix_caching: Bool = Field(False, description="reuse cached KV blocks of identical prompt prefixes (chunked scheduler)")
    reserve_upfront: Bool = Field(False, description="paged: take the blocks for prompt + max_new_tokens at admission (TGI)")
    preemption: Literal["recompute", "swap", "auto"] = Field(
        "recompute", description="how a preempted request gets its KV back (swap: prefill-first only; auto: vLLM V0's "
        "rule, recompute for a single-sequence request, swap for one with several sequences)")
    swap_space_gib: NonNegativeFloat = Field(4.0, le=1e6, description="host memory for swapped-out KV per GPU (GiB)")
    max_batch_prefill_tokens: PositiveInt = Field(4096, le=2 ** 24, description="tgi: most prompt tokens in one prefill step (tokens)")
    prefill_chunking: Bool = Field(False, description="tgi: prefill long prompts in chunks within max_batch_prefill_tokens, "
                                   "in steps shared with the decodes (TGI v3 PREFILL_CHUNKING)")
    waiting_served_ratio: NonNegativeFloat = Field(0.3, le=1e6, description="tgi: prefill only once waiting >= ratio x running (dimensionless)")
    max_waiting_tokens: PositiveInt = Field(20, le=2 ** 31, description="tgi: force a prefill after this many decode steps (steps)")
    max_concurrent_requests: PositiveInt = Field(128, le=2 ** 31, description="tgi: requests in the system beyond which arrivals are refused (requests)")
    # SGLang and TensorRT-LLM (simkv/sched/sglang.py, simkv/sched/trtllm.py)
    schedule_policy: Literal["fcfs", "lpm"] = Field(
        "fcfs", description="sglang: order of the waiting queue: fcfs, or lpm (longest prefix match first; FCFS "
        "when more than 128 wait)")
    schedule_conservativeness: PositiveFloat = Field(
        1.0, le=100, description="sglang: scales the new-token ratio that reserves room for running requests (dimensionless)")
    capacity_scheduler_policy: Literal["guaranteed_no_evict", "max_utilization"] = Field(
        "guaranteed_no_evict", description="trtllm: guaranteed_no_evict reserves prompt + max_new_tokens at admission "
        "and never preempts; max_utilization admits by current need and pauses the newest on pressure")
    expert_parallel: Bool = Field(False, description="MoE: spread whole experts across the replica's GPUs (all-to-all "
                                  "dispatch/combine) instead of splitting every expert tensor-parallel")
    expert_load_imbalance: Float = Field(1.0, ge=1.0, le=1e3, description="MoE: tokens of the busiest expert / the balanced "
                                         "share once all experts are busy (routing skew; 1 = balanced, dimensionless)")
    speculative: Speculative | None = Field(None, description="speculative decoding (see docs/modern-models.md); none: off")
    lora: LoraEngine | None = Field(None, description="LoRA adapter serving limits (vLLM semantics); none: no adapters")
    kv_offload: KvOffload | None = Field(
        None, description="offload of prefix-cache blocks to host memory and SSD (vllm-v1 CPU offload / LMCache, "
        "sglang HiCache, trtllm host cache); none: off (every preset's default)")


# ---------------------------------------------------------------- run, SLOs, variants


class Run(Strict):
    """How long to simulate, with which seed, and what to leave out of the statistics."""

    seed: NonNegativeInt = Field(0, description="seed of the request stream (same seed, same results)")
    num_requests: PositiveInt | None = Field(None, le=MAX_REQUESTS, description="requests to generate (requests); or duration_s")
    duration_s: PositiveFloat | None = Field(None, description="arrivals stop after this time (s); or num_requests")
    warmup_s: NonNegativeFloat = Field(0.0, description="requests arriving before this are left out of statistics (s)")
    warmup_requests: NonNegativeInt = Field(0, description="closed loop / offline: the first this many requests sent "
                                            "are left out of statistics (requests)")
    time_series_points: PositiveInt = Field(2000, ge=10, le=10 ** 6, description="most rows kept in timeseries.csv (rows)")
    intervals: NonNegativeInt = Field(0, le=1000, description="prediction intervals: re-simulate this many times with "
                                      "other seeds and resampled cost-model errors, report [p5, p95] of the headline "
                                      "metrics (runs); 0: none (simkv.studies.intervals)")

    @model_validator(mode="after")
    def _one_length(self):
        if self.num_requests is not None and self.duration_s is not None:
            raise ValueError("give exactly one of num_requests and duration_s")
        if self.duration_s is not None and self.warmup_s >= self.duration_s:
            raise ValueError(f"warmup_s ({self.warmup_s}) must be below duration_s ({self.duration_s})")
        if self.warmup_requests and self.warmup_s:
            raise ValueError("give warm-up in seconds (warmup_s) or in requests (warmup_requests), not both")
        if self.num_requests is not None and self.warmup_requests >= self.num_requests:
            raise ValueError(f"warmup_requests ({self.warmup_requests}) must be below num_requests ({self.num_requests})")
        return self


class Slo(Strict):
    """Per-request targets; a request meets the SLO when it meets every target given."""

    ttft_s: PositiveFloat | None = Field(None, description="time to first token target (s)")
    tpot_s: PositiveFloat | None = Field(None, description="time per output token target (s)")
    e2e_s: PositiveFloat | None = Field(None, description="end-to-end latency target (s)")


class Frontend(Strict):
    """Per-request time between a client sending a request and the engine seeing it (HTTP, tokenisation,
    the input queue) plus streaming back: added to client-side TTFT and E2E. Unset fields take the
    engine preset's defaults (`simkv.features.frontend`, 0 where not measured)."""

    fixed_s: NonNegativeFloat | None = Field(None, description="fixed cost per request (s); default from the preset")
    per_prompt_token_s: NonNegativeFloat | None = Field(None, description="cost per prompt token (s/token); default from the preset")


FORBIDDEN_VARIANT_PREFIXES = ("workload", "run", "variants", "name", "catalog_files")

# files a results folder holds next to the variants' sub-folders (simkv.files.results, simkv.result, simkv.report.plots)
OUTPUT_FILES = frozenset(
    ["summary.json", "summary.json.partial", "comparison.csv", "report.md", "scenario.json", "requests.csv",
     "timeseries.csv", "sweep.json", "sweep.csv", "points.csv", "points"]
    + [f"{stem}.{ext}" for stem in ("kv_breakdown", "kv_breakdown_mean", "kv_utilization", "latency_cdf",
                                     "batch_queue", "sweep", "curves") for ext in ("png", "svg")])
MAX_NAME_BYTES = 255   # longest file name on common file systems


def _folder_name(value: str, what: str) -> str:
    """A name that becomes a results folder: not blank, at most 255 bytes, not '.', '..' or the
    name of a results file."""
    if not value.strip():
        raise ValueError(f"{what} must not be blank")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise ValueError(f"{what} is {size} bytes long; it names a results folder, and file names hold at most "
                         f"{MAX_NAME_BYTES} bytes")
    if value.strip() in (".", ".."):
        raise ValueError(f"{what} '{value}' cannot name a results folder")
    if value.lower() in OUTPUT_FILES:
        raise ValueError(f"{what} '{value}' is the name of a file in the results folder")
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")
    return value


class Variant(Strict):
    """A named set of dotted overrides, simulated on the same request stream as the others."""

    name: str = Field(min_length=1, description="label in tables and figures")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted field -> value, e.g. engine.block_size: 32")

    @field_validator("name")
    @classmethod
    def _usable_as_folder(cls, value: str) -> str:
        return _folder_name(value, "a variant name")

    @field_validator("set")
    @classmethod
    def _engine_side_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key.split(".")[0] in FORBIDDEN_VARIANT_PREFIXES:
                raise ValueError(f"'{key}' changes the request stream; variants compare engines on the "
                                 "identical stream, so only model, hardware, engine, cost and slo may vary")
        return value


class Sweep(Strict):
    """One field stepped over values (e.g. the arrival rate from light load to overload); every
    variant runs at every value."""

    field: str = Field(min_length=1, description="dotted field to step, e.g. workload.arrival.rate")
    values: list[Any] = Field(min_length=1, description="the values, in order (the field's unit)")

    @field_validator("field")
    @classmethod
    def _not_structural(cls, value: str) -> str:
        if value.split(".")[0] in ("variants", "sweep", "name", "catalog_files"):
            raise ValueError(f"'{value}' cannot be swept")
        return value


class StepTableSpec(Strict):
    """Step times from your own measurements: a CSV of step shapes (the columns of `simkv step-time
    --batches`: prefill_seqs, prefill_len, decode_batch, decode_ctx, optional tokens_per_seq) and
    `ms`, measured for this scenario's model, GPU and TP, interpolated (docs/cost-model.md)."""

    table: str = Field(min_length=1, description="the CSV file, relative to the scenario file")
    extrapolate: Literal["linear", "reject"] = Field(
        "linear", description="steps outside the table's shapes: nearest row + a fitted plane (counted in the "
        "summary), or stop with an error")
    host_in_table: Bool = Field(False, description="the measured times include the engine's CPU time per step "
                                "(then engine.host_overhead_s and host_per_seq_s are not added)")


class Scenario(Strict):
    """One simulation study: a replica, its traffic, and optional variants."""

    name: str = Field("scenario", description="label for reports and the default results folder")
    description: str = Field("", description="what this scenario asks, in a sentence")
    model: str | ModelSpec = Field(description="catalog name (see `simkv catalog`) or a full model spec")
    hardware: Hardware
    engine: Engine = Field(default_factory=Engine)
    cost: Literal["calibrated", "roofline"] | StepTableSpec = Field(
        "calibrated", description="step-time model: calibrated on the GPU's measurements (falls back to the "
        "roofline for GPUs without measurements), the roofline of measured/datasheet ceilings, or "
        "{table: steps.csv}: your own measured step times")
    workload: Workload
    run: Run
    slo: Slo = Field(default_factory=Slo)
    variants: list[Variant] = Field(default_factory=list, description="named override sets compared side by side")
    sweep: Sweep | None = Field(None, description="step one field over values; each variant runs at each value")
    frontend: "Frontend" = Field(default_factory=lambda: Frontend(), description="client-side time outside the engine's steps")
    catalog_files: list[str] = Field(default_factory=list, description="extra catalog YAML files ({models: ..., gpus: ...}), relative to this file; merged into models/gpus when loaded")
    models: dict[str, ModelSpec] = Field(default_factory=dict, description="user model entries by name, usable in `model:`")
    gpus: dict[str, GpuSpec] = Field(default_factory=dict, description="user GPU entries by name, usable in `hardware.gpu:`")
    fleet: FleetSpec | None = Field(None, description="several replicas behind a router (simkv.fleet); none: one replica")

    @field_validator("name")
    @classmethod
    def _usable_as_folder(cls, value: str) -> str:
        return _folder_name(value, "the scenario name")

    @model_validator(mode="after")
    def _run_length(self):
        w = self.workload
        procs = ({c.arrival.process for c in w.classes} if w.classes else
                 {w.arrival.process} if w.arrival is not None else set())
        if procs & set(CLIENT_PROCESSES):
            if len(procs) > 1 and w.classes:
                raise ValueError("with closed-loop or offline clients every class needs the same kind of arrival "
                                 f"(have {', '.join(sorted(procs))}): give each class {{process: closed, concurrency: N}}")
            if self.run.duration_s is not None:
                raise ValueError("closed-loop and offline clients send a fixed number of requests: give "
                                 "run.num_requests instead of run.duration_s")
            if self.run.num_requests is None and w.trace is None:
                raise ValueError("closed-loop and offline clients need run.num_requests (requests to send in all)")
            return self
        if self.run.warmup_requests:
            raise ValueError("run.warmup_requests is for closed-loop and offline clients; use run.warmup_s with "
                             "an open-loop arrival process")
        replay = self.workload.trace is not None and self.workload.arrival is None
        if not replay and self.run.num_requests is None and self.run.duration_s is None:
            raise ValueError("run: give exactly one of num_requests and duration_s (a trace replay may give neither)")
        return self

    @model_validator(mode="after")
    def _fleet(self):
        if self.fleet is not None:
            check_fleet(self.fleet, self)
        return self

    @model_validator(mode="after")
    def _unique_variants(self):
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(dupes)}")
        return self

    def model_spec(self) -> ModelSpec:
        """The model: inline spec, a user entry, or the built-in catalog."""
        return _lookup(self.model, self.models, builtin_models(), "model")

    def draft_model_spec(self) -> ModelSpec | None:
        """The speculative-decoding draft model (method draft), resolved like `model`."""
        s = self.engine.speculative
        if s is None or s.draft_model is None:
            return None
        return _lookup(s.draft_model, self.models, builtin_models(), "engine.speculative.draft_model")

    def gpu_spec(self) -> GpuSpec:
        """The GPU: inline spec, a user entry, or the built-in catalog."""
        return _lookup(self.hardware.gpu, self.gpus, builtin_gpus(), "hardware.gpu")


def _lookup(value, user: dict, builtin: dict, field: str):
    if not isinstance(value, str):
        return value
    if value in user:
        return user[value]
    if value in builtin:
        return builtin[value]
    known = sorted(set(user) | set(builtin))
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.75)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise SimkvError(f"unknown name '{value}'", field=field,
                     fix=f"{hint}known: {', '.join(known)}; or define it under `models:`/`gpus:` or in a catalog file")


RequestClass.model_rebuild()
Workload.model_rebuild()
Scenario.model_rebuild()
