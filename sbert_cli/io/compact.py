"""How vectors are stored (--dtype): float32 or float16 as they are, int8/uint8 scaled by per-dimension ranges, binary
and ubinary one bit a dimension; exactly as sentence-transformers' quantize_embeddings makes them from the same ranges.

int8/uint8 ranges ([min, max] of each dimension) come from --calibration or from the first window a run writes,
are held fixed for the rest of the run (and across --resume, through the manifest), and go into the output's
metadata so that a reader can turn the bytes back into floats: x ~ min + (q + 128) * (max - min) / 255 for int8,
the same without + 128 for uint8.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.quantize import PACKED, SCALED, quantize, ranges_of


class VectorForm:
    """One run's stored form of its vectors; the ranges of int8/uint8 are set once (given, or from the first
    vectors stored) and never change after."""

    def __init__(self, dtype: str = "float32", ranges: np.ndarray | None = None, calibration: str = "first window") -> None:
        self.dtype = dtype
        self.ranges = None if ranges is None else np.asarray(ranges, dtype=np.float32)
        self.calibration = calibration  # where the ranges came from, for the metadata

    @classmethod
    def for_output(cls, dtype: str, calibration: str | None, dim: int) -> VectorForm:
        """The form --dtype asks for, with the ranges of a --calibration file when one is given."""
        if dtype in SCALED and calibration is not None:
            return cls(dtype, ranges_of(load_calibration(calibration, dim)), calibration)
        return cls(dtype)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype({"binary": "int8", "ubinary": "uint8"}.get(self.dtype, self.dtype))

    def width(self, dim: int) -> int:
        """Stored values a row: a byte per 8 dimensions when packed (the last one padded with zero bits)."""
        return (dim + 7) // 8 if self.dtype in PACKED else dim

    def store(self, vectors: np.ndarray) -> np.ndarray:
        """float32 vectors [rows, dim] in the stored form."""
        if self.dtype in SCALED:
            if self.ranges is None:
                self.ranges = _first_ranges(vectors)
            return quantize(vectors, self.dtype, self.ranges)
        if self.dtype in PACKED:
            return quantize(vectors, self.dtype)
        return np.ascontiguousarray(vectors, dtype=self.numpy_dtype)

    def record(self) -> dict[str, Any] | None:
        """What a reader needs to undo int8/uint8 (None for the other forms, or before the ranges are known)."""
        if self.dtype not in SCALED or self.ranges is None:
            return None
        return {"dtype": self.dtype, "min": self.ranges[0].tolist(), "max": self.ranges[1].tolist(), "calibration": self.calibration}

    def metadata(self) -> dict[str, str]:
        """The Parquet schema metadata's part: sbert.quantization, the record as JSON."""
        record = self.record()
        return {} if record is None else {"sbert.quantization": json.dumps(record)}

    def restore(self, record: dict[str, Any] | None) -> None:
        """Take the ranges an earlier run of the same output recorded (--resume), so every shard is scaled alike."""
        if record is not None and self.dtype in SCALED:
            self.ranges = np.asarray([record["min"], record["max"]], dtype=np.float32)
            self.calibration = str(record.get("calibration", self.calibration))


def _first_ranges(vectors: np.ndarray) -> np.ndarray:
    if len(vectors) < 2:
        raise InputDataError(
            f"--dtype int8/uint8: the first window holds {len(vectors)} vector, too few to take ranges from; pass --calibration FILE.npy"
        )
    return ranges_of(vectors)


def load_calibration(path: str, dim: int) -> np.ndarray:
    """--calibration: a .npy of float vectors [rows, dim], dim the run's (after --truncate-dim)."""
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--calibration {path}: not a readable .npy array ({exc}); pass a .npy of vectors saved by numpy.save") from None
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.shape[0] < 2 or vectors.dtype.kind != "f":
        raise UsageError(
            f"--calibration {path}: holds a {vectors.dtype} array of shape {vectors.shape}; pass at least 2 float vectors of this run's {dim} dimensions"
        )
    finite = np.isfinite(vectors)
    if not finite.all():
        row, column = (int(index) for index in np.argwhere(~finite)[0])
        count = int((~finite).sum())
        raise UsageError(
            f"--calibration {path}: holds {count} non-finite value{'s' if count != 1 else ''} (NaN or infinity; the first at row {row}, "
            f"dimension {column}), which give no range; pass finite vectors"
        )
    return vectors
