"""Pricing of KV offload loads (simkv.kv.offload) in a step's time.

A prefix block found in a lower tier is copied to the GPU before the prefill that would have
recomputed it: host-tier blocks at the GPU's pinned host-to-device rate (measured in device.json
where the GPU has measurements, else the datasheet host link), SSD-tier blocks at
min(SSD read, host-to-device) (staged through host memory, pipelined: the slower link sets the
rate; the SSD figure is stated, not measured). The load is added to the step that admits the
request, not overlapped with its compute (an upper bound: vLLM's offloading connector loads
asynchronously before the prefill, SGLang's HiCache overlaps layer by layer). Writes down to the
tiers are asynchronous copies and are not priced (see simkv.kv.offload).
"""

from __future__ import annotations


class OffloadPricing:
    """Mixin of the step-time models: the builder sets the SSD rate and the source texts when the
    engine has offload tiers."""

    kv_load_ssd_bps: float | None = None   # effective SSD -> GPU rate (B/s); None: no SSD tier
    kv_offload_sources: dict | None = None  # source texts of the tier transfers; None: no offload

    def offload_sources(self) -> dict[str, str]:
        if self.kv_offload_sources is None:
            return {"kv_offload": "n/a (no engine.kv_offload)"}
        return dict(self.kv_offload_sources)


def kv_load_seconds(cost, plan) -> float:
    """Seconds to load the step's offloaded prefix blocks: bytes / the tier's read rate."""
    host, ssd = plan.kv_load_host_tokens, plan.kv_load_ssd_tokens
    if not (host or ssd):
        return 0.0
    seconds = host * cost.kv_bytes_per_token / cost.h2d_bytes_per_s
    if ssd:
        if not cost.kv_load_ssd_bps:
            raise ValueError("an SSD load with no SSD tier rate set")
        seconds += ssd * cost.kv_bytes_per_token / cost.kv_load_ssd_bps
    return seconds
