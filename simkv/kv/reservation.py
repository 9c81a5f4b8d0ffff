"""Reservation policies of contiguous engines: how many slots a request's region gets at admission.

`final_tokens` is the KV slots the request will write (prompt + output - 1).
- max_model_len: the model's whole context, whatever the request (FasterTransformer, Orca-Max).
- pow2: the prompt plus the next power of two of the output length (Orca-Pow2, PagedAttention
  paper §6.1: "over-reserves the space for outputs by at most 2x: if the true output length is 25,
  it reserves 32 positions for outputs"), at most max_model_len.
- oracle: exactly the final length (Orca-Oracle: an unrealisable ideal).
Orca places every region with the buddy allocator (§6.1), which rounds a region up to a power of
two: that rounding is placement waste, not reservation (simkv.kv.buddy).
- prompt_plus_max_new: prompt + the client's max_new_tokens - 1, the most slots the request can write
  (TGI v3 backends/v3/src/queue.rs: input_length + max_new_tokens + speculate - 1, speculate 0).
"""

from __future__ import annotations


def reservation_tokens(policy: str, *, prompt_tokens: int, final_tokens: int, max_new_tokens: int,
                       max_model_len: int) -> int:
    """Slots to reserve for one request under `policy`."""
    if policy == "max_model_len":
        return max_model_len
    if policy == "pow2":
        outputs = max(final_tokens - prompt_tokens + 1, 1)
        return min(prompt_tokens + (1 << (outputs - 1).bit_length()) - 1, max_model_len)
    if policy == "oracle":
        return final_tokens
    if policy == "prompt_plus_max_new":
        return prompt_tokens + max(max_new_tokens - 1, 0)
    raise ValueError(f"unknown reservation policy {policy!r}")


def largest_reservation(policy: str, max_model_len: int) -> int:
    """The most slots any admissible request can need under `policy` (for fit checks)."""
    return max_model_len
