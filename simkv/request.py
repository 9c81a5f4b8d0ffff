"""Per-request columns of one simulation: what each request is (static) and what happened to it.

Columnar numpy arrays indexed by request id keep a 100,000-request run at ~100 bytes per
request with no per-token storage (token gaps are kept as streaming statistics).
"""

from __future__ import annotations

import numpy as np

WAITING, DONE, REJECTED = 0, 1, 2
REJECT_REASONS = ("", "prompt longer than max_model_len", "reservation larger than the KV cache",
                  "refused by the engine (queue full: max_concurrent_requests)",
                  "prompt longer than the engine's prefill budget (tgi: max_batch_prefill_tokens; trtllm without chunking: max_num_tokens)",
                  "conversation ended (an earlier turn could not run)")
REFUSED_BY_ENGINE = 3
PROMPT_OVER_PREFILL_BUDGET = 4
SESSION_ENDED = 5
FAILED_NO_REPLICA = 6   # fleet: its replica failed and no live replica could take the retry (simkv.fleet)
REJECT_REASONS = REJECT_REASONS + ("failed: its replica failed and no live replica was left to retry it on",)


class RequestTable:
    """Static lengths plus runtime outcomes of every request of a run."""

    def __init__(self, arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                 max_new_tokens: np.ndarray, reject_reason: np.ndarray, prefix_id: np.ndarray | None = None,
                 prefix_tokens: np.ndarray | None = None, group: np.ndarray | None = None) -> None:
        n = len(arrival_s)
        self.num_requests = n
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.max_new_tokens = max_new_tokens
        self.final_kv_tokens = prompt_tokens + output_tokens - 1   # KV slots ever written
        self.reject_reason = reject_reason                         # index into REJECT_REASONS
        self.status = np.where(reject_reason > 0, REJECTED, WAITING).astype(np.int8)
        self.generated = np.zeros(n, dtype=np.int64)
        self.first_scheduled_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.last_token_s = np.full(n, np.nan)
        self.num_preemptions = np.zeros(n, dtype=np.int32)
        self.tbt_max_s = np.zeros(n)   # longest gap between consecutive tokens
        self.prefix_id = prefix_id if prefix_id is not None else np.full(n, -1, dtype=np.int64)
        self.prefix_tokens = prefix_tokens if prefix_tokens is not None else np.zeros(n, dtype=np.int64)
        # the request a sequence belongs to: parallel sampling fans one request out into several rows
        self.group = group if group is not None else np.arange(n, dtype=np.int64)
        self.beam_reselect = 0.0   # beam search: chance per step that a beam takes another's hypothesis
        self.trace_blocks: list | None = None   # Mooncake-style prefix block ids per request
        self.trace_block_tokens = 512           # tokens per trace block id
        self.class_id: np.ndarray | None = None  # request class (index into workload.classes), or None
        self.session: np.ndarray | None = None   # conversation of each turn, or None
        self.next_turn: np.ndarray | None = None  # the session's next turn row (-1: last)
        self.think_s: np.ndarray | None = None    # think time before a follow-up turn is sent
        self.clients = None                        # closed-loop / offline clients (simkv.workload.clients.ClientSpec)
        self.sent_s = np.full(n, np.nan)           # when a client sent the request (NaN: arrival - frontend_s)
        self.frontend_s: np.ndarray | None = None  # client-side time outside the engine per request (s)
        self.prefix_hit_tokens = np.zeros(n, dtype=np.int64)    # prompt tokens found in the prefix cache
        self.prefix_query_tokens = np.zeros(n, dtype=np.int64)  # prompt tokens looked up
        self.prefix_hit_blocks = np.zeros(n, dtype=np.int64)    # full blocks found in the prefix cache
        self.prefix_query_blocks = np.zeros(n, dtype=np.int64)  # full blocks looked up
