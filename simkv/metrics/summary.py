"""The shape of a run's summary (`summary.json`), written down as TypedDicts.

`simkv.metrics.summarize` builds it; the report, the figures, capacity search and sweeps read it.
These types add no behaviour and change no byte of the JSON: they name the sections and their
fields so a reader (and mypy) sees what a summary holds. Sections present only when the feature
is on (SLOs, classes, prefix cache, offload, LoRA, speculative decoding, fleets, intervals) are
optional keys (`total=False`); their inner shapes live with the code that writes them.
"""

from __future__ import annotations

from typing import Any, TypedDict


class LatencyStats(TypedDict, total=False):
    """Percentiles of one latency over requests (s); None where undefined (e.g. no request)."""

    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


class RequestCounts(TypedDict, total=False):
    total: int
    measured: int
    completed: int
    rejected: int
    rejected_by_reason: dict[str, int]
    preempted_requests: int
    preemptions: int
    arrived_in_window: int
    refused_in_window: int
    unservable: dict[str, int]        # reason -> requests no engine could serve, arrived in the window
    unservable_total: dict[str, int]
    sequences: int                    # parallel sampling: sequences over all requests


class Throughput(TypedDict):
    measured_window_s: list[float]
    output_tokens_per_s: float
    requests_per_s: float
    total_output_tokens: int
    makespan_s: float


class Latency(TypedDict, total=False):
    ttft: LatencyStats
    tbt: dict[str, Any]               # pooled token gaps: p50/p90/p99/max and a note
    e2e: LatencyStats
    tpot: LatencyStats
    queue: LatencyStats
    over: str                         # "served ...": which requests the percentiles are over


class KvFractions(TypedDict):
    """Shares of the KV cache (the rows of simkv.kv.usage.KV_ROWS); they sum to 1."""

    token: float
    reserved: float
    internal_frag: float
    external_frag: float
    free: float


class KvSummary(TypedDict, total=False):
    capacity_tokens: int
    mean_fraction: KvFractions
    peak_fraction: KvFractions
    utilization_mean: float
    utilization_peak: float
    prefix_cache: dict[str, Any]
    offload: dict[str, Any]


class Batch(TypedDict):
    mean_running: float
    max_running: int
    mean_waiting: float
    max_waiting: int
    steps: int


class SloSummary(TypedDict, total=False):
    targets: dict[str, float]
    attainment: float | None          # met / offered (refused = missed, unservable left out)
    attainment_served: float | None
    goodput_requests_per_s: float
    over: str
    offered: int
    met: int
    refused: int
    unservable: int


class Setup(TypedDict, total=False):
    model: str
    gpu: str
    tensor_parallel: int
    preset: str
    scheduler: str
    allocator: str
    block_size: int
    reservation: str | None
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    cost_model: str
    memory: dict[str, Any]
    engine: dict[str, Any]            # every resolved engine field
    cost_sources: dict[str, str]      # per cost component: measured / fitted / roofline / user table / assumed


class Summary(TypedDict, total=False):
    """One run's `summary.json`."""

    requests: RequestCounts
    throughput: Throughput
    latency_s: Latency
    latency_s_offered: dict[str, Any]
    kv_cache: KvSummary
    batch: Batch
    slo: SloSummary
    classes: dict[str, dict[str, Any]]
    scenario: str
    variant: str
    overrides: dict[str, Any]
    setup: Setup
    workload_effects: dict[str, int]
    bench: dict[str, Any]             # `vllm bench serve`'s names (simkv.metrics.bench)
    lora: dict[str, Any]
    speculative: dict[str, Any]
    fleet: dict[str, Any]
    intervals: dict[str, Any]
