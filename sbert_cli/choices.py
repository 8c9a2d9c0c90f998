"""The option values and constants every layer shares; it imports nothing of sbert's, so any module may use it."""

from __future__ import annotations

from typing import Literal, get_args

DEFAULT_MODEL = "DMetaSoul/sbert-chinese-general-v1"
STDOUT = "-"

# Fixed choices, declared once: the CLI offers exactly these and --help lists them (input formats: io.formats).
Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]  # the arithmetic; how vectors are stored is Dtype
BackendChoice = Literal["auto", "openvino", "torch"]
Dtype = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
Similarity = Literal["cosine", "dot", "euclidean", "manhattan"]
OnError = Literal["fail", "skip"]
Engine = Literal["local", "ray"]
Quoting = Literal["auto", "csv", "none"]  # auto: csv for CSV, none for TSV (quotes are text, as IANA TSV and `cut` have it)
PRECISIONS: tuple[str, ...] = get_args(Precision)
BACKEND_CHOICES: tuple[str, ...] = get_args(BackendChoice)
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
SCALED_DTYPES = ("int8", "uint8")  # need per-dimension ranges: from the first window or --calibration
PACKED_DTYPES = ("binary", "ubinary")  # a bit a dimension, 8 to a byte
