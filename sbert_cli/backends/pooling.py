"""Token states to sentence vectors as sentence-transformers' Pooling and Normalize modules make them."""

from __future__ import annotations

from typing import Any


def sentence_vectors(hidden: Any, mask: Any | None, pooling: str, normalize: bool) -> Any:
    """float32 sentence vectors from a forward pass's token states: pooled, then L2-normalised if asked."""
    import torch

    pooled = pool(hidden.float(), mask, pooling)
    return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled


def pool(hidden: Any, mask: Any | None, mode: str) -> Any:
    """Pool token vectors [batch, tokens, dim] into sentence vectors over a boolean attention mask (None: every
    token counts), as sentence-transformers' Pooling does."""
    import torch

    if mode == "cls":
        return hidden[:, 0]
    if mask is None:
        if mode == "max":
            return hidden.max(dim=1).values
        summed = hidden.sum(dim=1)
        counts = torch.full((hidden.shape[0], 1), float(hidden.shape[1]), dtype=hidden.dtype, device=hidden.device)
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        if mode == "max":
            return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        summed = (hidden * weights).sum(dim=1)
        counts = weights.sum(dim=1).clamp(min=1e-9)
    if mode == "mean_sqrt_len":
        return summed / counts.sqrt()
    return summed / counts
