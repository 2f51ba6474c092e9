"""The common opening of a batch of token sequences, which both the sampler and the trainer run once.

Every prompt of a rollout batch opens with the same system prompt, tool specs and worked examples.
On a CPU, prompt tokens cost as much as sampled ones, so the HF backend and the trainer's logprob
pass both run that shared opening through the decoder once and repeat its KV cache across the rows.
This is the one place that decides how long the shared opening is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

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


# ----- the form of a model's KV cache -------------------------------------------------------------
# Sharing an opening means handing the model a transformers ``Cache`` and letting it extend that object in
# place. Not every model works that way: Unsloth's CUDA forwards take and return the legacy form (a tuple of
# (key, value) pairs per layer) and never touch the object passed in, and in training mode, when no cache is
# passed, they switch the cache off and return None. Code that shares a prefix asks here first, and falls back
# to running every row whole when the answer is no, which gives the same tokens and logprobs, only slower.


def shareable_cache(past: Any) -> tuple[Any, str | None]:
    """``(cache, None)`` when ``past`` (a forward's ``past_key_values``) is a transformers ``Cache`` that can be
    repeated across rows and handed back, else ``(None, why not)``."""
    from transformers.cache_utils import Cache

    if isinstance(past, Cache):
        return past, None
    if past is None:
        return None, "the model returned no KV cache (it turns use_cache off, as Unsloth does in training mode)"
    return None, f"the model returns its KV cache as a {type(past).__name__} of per-layer tensors, not a Cache"


_noted: set[str] = set()


def note_once(message: str) -> None:
    """Log ``message`` the first time it comes up in this process (a model's cache form does not change)."""
    if message not in _noted:
        _noted.add(message)
        logging.getLogger("agentrl").warning(message)
