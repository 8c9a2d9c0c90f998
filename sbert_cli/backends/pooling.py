"""Token states to sentence vectors as sentence-transformers' Pooling module makes them, then the head after it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pooling:
    """How token states become one vector: the mode, and how many leading tokens (the prompt's, when the model's
    Pooling has include_prompt false) are left out."""

    mode: str
    skip: int = 0


def sentence_vectors(hidden: Any, mask: Any | None, pooling: Pooling, head: Callable[[Any], Any]) -> Any:
    """float32 sentence vectors from a forward pass's token states: pooled, then through the model's head (Dense,
    Normalize, truncation)."""
    return head(pool(hidden.float(), mask, pooling))


def pool(hidden: Any, mask: Any | None, pooling: Pooling) -> Any:
    """Pool token vectors [batch, tokens, dim] into sentence vectors over a boolean attention mask (None: every
    token counts), as sentence-transformers' Pooling does. Rows are padded on the right."""
    import torch

    batch, length, _ = hidden.shape
    if pooling.skip:
        # sentence-transformers zeroes the mask over the prompt: every mode below then leaves those tokens out.
        kept = torch.arange(length, device=hidden.device) >= pooling.skip
        mask = kept.expand(batch, length) if mask is None else mask & kept
    mode = pooling.mode
    if mode in ("cls", "lasttoken"):
        return _one_token(hidden, mask, first=mode == "cls")
    if mask is None:
        if mode == "max":
            return hidden.max(dim=1).values
        if mode == "weightedmean":
            weights = torch.arange(1, length + 1, dtype=hidden.dtype, device=hidden.device).view(1, -1, 1)
            return (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        summed = hidden.sum(dim=1)
        counts = torch.full((batch, 1), float(length), dtype=hidden.dtype, device=hidden.device)
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        if mode == "max":
            return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        if mode == "weightedmean":  # weights 1, 2, 3... by position, from the first (real) token on
            weights = weights * torch.arange(1, length + 1, dtype=hidden.dtype, device=hidden.device).view(1, -1, 1)
        summed = (hidden * weights).sum(dim=1)
        counts = weights.sum(dim=1).clamp(min=1e-9)
    if mode == "mean_sqrt_len":
        return summed / counts.sqrt()
    return summed / counts


def _one_token(hidden: Any, mask: Any | None, first: bool) -> Any:
    """cls: each row's first counted token; lasttoken: its last real one (sbert pads on the right, so not the last
    position). A row with no counted token gives sentence-transformers' answers: position 0 for cls, zeros for
    lasttoken."""
    import torch

    if mask is None:
        return hidden[:, 0] if first else hidden[:, -1]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    counted = mask.to(torch.int32)
    if first:
        return hidden[rows, counted.argmax(dim=1)]
    last = hidden.shape[1] - 1 - counted.flip(1).argmax(dim=1)
    return hidden[rows, last] * counted.amax(dim=1, keepdim=True).to(hidden.dtype)
