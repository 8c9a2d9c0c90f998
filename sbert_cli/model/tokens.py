"""A window's token ids: one flat int32 array with offsets, padded per batch by numpy indexing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np


@dataclass
class Tokenized:
    """Many texts' token ids in one flat array (truncated, special tokens included), and each text's count before truncation.

    One int32 array instead of a list per text: a 10,000-row window's ids take a few MiB, not tens, and a
    batch is padded by numpy indexing rather than a loop over its rows.
    """

    flat: np.ndarray  # int32: text i's ids are flat[offsets[i]:offsets[i + 1]]
    offsets: np.ndarray  # int64, one more than there are texts
    n_tokens: np.ndarray  # int64: each text's token count before truncation

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], n_tokens: Sequence[int] | None = None) -> Tokenized:
        """From one id list per text; `n_tokens` defaults to the lists' lengths (nothing was truncated)."""
        offsets = offsets_of(np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids)))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
        counts = np.diff(offsets) if n_tokens is None else np.asarray(n_tokens, dtype=np.int64).reshape(-1)
        return cls(flat, offsets, counts)

    @classmethod
    def concat(cls, parts: Sequence[Tokenized]) -> Tokenized:
        """The texts of several parts, one after another (at least one part)."""
        if len(parts) == 1:
            return parts[0]
        flat = np.concatenate([part.flat for part in parts])
        offsets = offsets_of(np.concatenate([part.lengths for part in parts]))
        return cls(flat, offsets, np.concatenate([part.n_tokens for part in parts]))

    def __len__(self) -> int:
        return len(self.n_tokens)

    @property
    def lengths(self) -> np.ndarray:
        """Each text's token count as the model sees it (after truncation)."""
        return np.diff(self.offsets)

    @property
    def ids(self) -> list[list[int]]:
        """Each text's ids as a list (for callers that want plain Python)."""
        return [self.flat[start:end].tolist() for start, end in zip(self.offsets[:-1], self.offsets[1:])]

    def padded(self, rows: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The ids of `rows` padded to the longest of them [rows, longest] (int32), and their lengths."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        positions = np.arange(int(lengths.max()) if len(rows) else 0)
        inside = positions < lengths[:, None]
        if not self.flat.size:
            return np.full(inside.shape, pad_id, dtype=np.int32), lengths
        gathered = self.flat[np.where(inside, starts[:, None] + positions, 0)]
        return np.where(inside, gathered, np.int32(pad_id)).astype(np.int32, copy=False), lengths


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """Where each text starts in the flat array, and where the last one ends."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets
