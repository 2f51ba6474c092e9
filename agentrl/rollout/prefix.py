"""The common opening of a batch of token sequences, which both the sampler and the trainer run once.

Every prompt of a rollout batch opens with the same system prompt, tool specs and worked examples.
On a CPU, prompt tokens cost as much as sampled ones, so the HF backend and the trainer's logprob
pass both run that shared opening through the decoder once and repeat its KV cache across the rows.
This is the one place that decides how long the shared opening is.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_SHARED_PREFIX = 16
"""Shorter common openings are not worth a separate decoder call."""


def common_prefix_length(rows: Sequence[Sequence[int]], limit: int | None = None) -> int:
    """Length of the opening all ``rows`` share, at most ``limit``; 0 when it is shorter than
    :data:`MIN_SHARED_PREFIX` or there is only one row (nothing to share)."""
    if len(rows) < 2:
        return 0
    first = rows[0]
    n = min(len(r) for r in rows)
    if limit is not None:
        n = min(n, limit)
    for row in rows[1:]:
        i = 0
        while i < n and row[i] == first[i]:
            i += 1
        n = i
    return n if n >= MIN_SHARED_PREFIX else 0
