"""Quantisation as sentence-transformers does it (quantize_embeddings), step for step: int8/uint8 scaled by
per-dimension ranges, binary/ubinary one bit a dimension; and quantised vectors made comparable again, as its
EmbeddingSimilarityEvaluator compares them."""

from __future__ import annotations

import numpy as np

from sbert_cli.choices import PACKED_DTYPES as PACKED
from sbert_cli.choices import SCALED_DTYPES as SCALED


def quantize(vectors: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """sentence_transformers.quantization.quantize_embeddings for one precision and given ranges, step for step (in
    float32, as it computes), so the same vectors and ranges give the same integers and bits."""
    embeddings = np.asarray(vectors, dtype=np.float32)
    if dtype in SCALED:
        assert ranges is not None
        ranges = ranges.astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        q_vals = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return q_vals.astype(np.uint8) if dtype == "uint8" else (q_vals - 128).astype(np.int8)
    if dtype == "binary":
        return (np.packbits(embeddings > 0, axis=-1) - 128).astype(np.int8)
    if dtype == "ubinary":
        return np.packbits(embeddings > 0, axis=-1)
    raise ValueError(f"not a quantised dtype: {dtype}")


def ranges_of(vectors: np.ndarray) -> np.ndarray:
    """[min, max] of each dimension over the vectors (sentence-transformers' calibration)."""
    return np.vstack((np.min(vectors, axis=0), np.max(vectors, axis=0))).astype(np.float32)


def comparable(left: np.ndarray, right: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Two sides of a pair set as `dtype` stores them, back in float32 for a similarity function, as
    sentence-transformers' EmbeddingSimilarityEvaluator does with a precision: vectors L2-normalised, int8/uint8
    ranges taken over both sides together, codes (or bits, unpacked to 0/1) compared as numbers."""
    if dtype == "float32":
        return left, right
    if dtype == "float16":
        return left.astype(np.float16).astype(np.float32), right.astype(np.float16).astype(np.float32)
    both = np.concatenate([left, right]).astype(np.float32)
    norms = np.linalg.norm(both, axis=1, keepdims=True)
    both = both / np.maximum(norms, 1e-12)
    if dtype in PACKED:  # binary and ubinary hold the same bits; unpacked, each dimension is 0 or 1
        codes = np.unpackbits(quantize(both, "ubinary"), axis=1)
    else:
        codes = quantize(both, dtype, ranges_of(both))
    values = codes.astype(np.float32)
    return values[: len(left)], values[len(left) :]
