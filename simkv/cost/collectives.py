"""Tensor-parallel all-reduce (and point-to-point) time from measured NCCL profiles.

The profiles are Vidur's (MIT licence, microsoft/vidur commit 7d47513; copied unchanged with
their licence to simkv/cost/data/vidur/): median times of `size`-byte collectives on 2/4/8 GPUs of
one NVSwitch node (DGX A100, DGX H100). The raw medians are noisy at small sizes (tens of
microseconds of launch jitter), so each GPU count gets a latency-bandwidth model
    t(bytes) = alpha + bytes / bw
fitted by non-negative least squares in relative error over all its rows (about 1,000 sizes from
2 KiB to 64 MiB); beyond 64 MiB the same line extrapolates (bandwidth-bound).
Simplifications: the profiles were taken with eager torch.distributed NCCL calls; an engine's
custom all-reduce inside a CUDA graph can be faster for small messages (alpha is then an upper
bound); H200 uses the DGX H100 profile (same NVLink 4 / NVSwitch fabric, assumed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CollectiveModel:
    label: str                                    # e.g. "h100_dgx all_reduce"
    fits: dict = field(default_factory=dict)      # num_workers -> (alpha_s, s_per_byte, rows, median |rel. residual|)
    assumed_for: str | None = None                # a GPU that borrows another node's profile

    @classmethod
    def fit(cls, cols: dict, label: str, assumed_for: str | None = None) -> "CollectiveModel":
        from simkv.cost import exact_fit
        fits = {}
        single_node = cols["num_workers"] == cols["devices_per_node"]
        for n in np.unique(cols["num_workers"][single_node]):
            sel = single_node & (cols["num_workers"] == n)
            size, t = cols["size"][sel], cols["s"][sel]
            x = np.c_[np.ones(len(t)), size]
            coef = exact_fit.nnls(x / t[:, None], np.ones(len(t)))   # the same on every CPU
            resid = np.abs(exact_fit.matvec(x, coef) / t - 1)
            fits[int(n)] = (float(coef[0]), float(coef[1]), int(sel.sum()), float(np.median(resid)))
        return cls(label, fits, assumed_for)

    def covers(self, num_workers: int) -> bool:
        return num_workers in self.fits

    def seconds(self, num_bytes, num_workers: int):
        alpha, per_byte, _, _ = self.fits[num_workers]
        return alpha + np.asarray(num_bytes, float) * per_byte

    def describe(self, num_workers: int) -> str:
        alpha, per_byte, rows, resid = self.fits[num_workers]
        borrowed = f", assumed for {self.assumed_for}" if self.assumed_for else ""
        return (f"measured: Vidur NCCL profile {self.label} on {num_workers} GPUs of one NVSwitch node (MIT, "
                f"microsoft/vidur 7d47513{borrowed}), fitted latency {alpha * 1e6:.1f} us + {1e-9 / per_byte:.0f} GB/s "
                f"over {rows} sizes (median residual {100 * resid:.0f}%)")
