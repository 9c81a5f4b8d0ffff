"""Validation mode: replay the step plans simkv's scheduler produces on a real mini engine (random
weights, a real paged or contiguous KV cache) and compare measured with predicted step times and
latencies; and measure a GPU's operators for the cost model (`simkv calibrate`).

`schedule` and `timeline` are plain Python; the modules that run kernels import PyTorch, which is
the optional extra `simkv[gpu]` and never loaded by the simulator itself.
"""
